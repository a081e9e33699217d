"""Where a hit's time goes, measured from outside the code: `python -m bench.profiler [MODE ...] [--src DIR]`.

Modes (default: all):
  cprofile    cProfile of one hit by path in a fresh process; every function in EXPECTED must exist under
              its qualified name and have run, or the profiler fails (exit 1, one line): when the code it
              measures moves, update EXPECTED rather than measure nothing
  importtime  `-X importtime` of `import wasmcache` and of a whole hit process (wasmcache must be among them)
  strace      syscalls of the hit alone (between two marker stat() calls, `strace -f`) and of the whole
              process (`strace -f -c`); skipped, saying so, when strace is not installed

The hit is of a small generated module (`--yosys`: the 49 MB Yosys module) on a warm root, fresh processes,
children run with `--src DIR` (default: this checkout's src/) first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness import BenchError, Tree, child, current_tree, env_for, sample, yosys_wasm

# The hit path by path, top-down (ModuleCache.load in src/wasmcache/_cache.py). The one list to update when it moves.
EXPECTED = (
    "wasmcache._cache:ModuleCache.load",
    "wasmcache._cache:ModuleCache._load",
    "wasmcache._cache:ModuleCache._digest",
    "wasmcache._core:SourceDigests.digest",
    "wasmcache._core:CacheContext.engine_identity",
    "wasmcache._cache:load_entry",
    "wasmcache._core:Namespace.check",
    "wasmcache._cache:_deserialize",
    "wasmcache._core:deserialize_file",
)
MODES = ("cprofile", "importtime", "strace")
TINY_WAT = '(module (func (export "f") (result i32) i32.const 42) (memory (export "memory") 1))'


def fail(message: str) -> None:
    print(f"bench.profiler: {message}", file=sys.stderr)
    raise SystemExit(1)


def profile_cprofile(tree: Tree, root: Path, wasm: Path) -> dict:
    out = sample((child("profile", "cprofile", root, wasm, json.dumps(EXPECTED)), env_for(tree)))
    if out["missing"]:
        fail(f"measured function(s) not found (renamed or moved? update EXPECTED in bench/profiler.py): "
             f"{', '.join(out['missing'])}")
    if out["not_called"]:
        fail(f"expected function(s) did not run in a hit (update EXPECTED in bench/profiler.py): "
             f"{', '.join(out['not_called'])}")
    print("cProfile of one hit by path (fresh process): the expected functions, top-down")
    for name, row in out["expected"].items():
        print(f"  {name:50} calls {row['calls']:3}  cum {row['cumtime'] * 1e3:7.3f} ms")
    print("  top 15 by own time:")
    for row in out["top"]:
        print(f"  {row['function'][:60]:60} calls {row['calls']:4}  own {row['tottime'] * 1e3:7.3f} ms")
    return out


def _importtime(argv: list[str], tree: Tree) -> list[tuple[str, int, int]]:
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True,
                          env=env_for(tree), check=False)
    if proc.returncode != 0:
        fail(f"{' '.join(argv[:3])} failed under -X importtime: {proc.stderr.strip().splitlines()[-1:]}")
    rows = [re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)", line) for line in proc.stderr.splitlines()]
    return [(m[3], int(m[1]), int(m[2])) for m in rows if m]


def profile_importtime(tree: Tree, root: Path, wasm: Path) -> dict:
    out = {}
    for label, argv in (("import wasmcache", ["-c", "import wasmcache"]),
                        ("hit process", child("lib_hit", root, wasm)[1:])):
        rows = _importtime(argv, tree)
        names = {name for name, _, _ in rows}
        if "wasmcache" not in names:
            fail(f"-X importtime of {label}: wasmcache was not imported (is --src right?)")
        ours = sum(own for name, own, _ in rows if name.startswith("wasmcache"))
        total = sum(own for _, own, _ in rows)
        out[label] = {"total_us": total, "wasmcache_us": ours, "modules": len(rows),
                      "wasmcache_modules": sorted(n for n in names if n.startswith("wasmcache"))}
        print(f"-X importtime, {label}: {len(rows)} modules, {total / 1e3:.1f} ms in all, "
              f"{ours / 1e3:.1f} ms in wasmcache's own {len(out[label]['wasmcache_modules'])} modules")
        for name, own, _ in sorted(rows, key=lambda r: -r[1])[:8]:
            print(f"  {name:40} own {own / 1e3:6.2f} ms")
    print("  (a module imported by importlib.import_module, as wasmcache's lazy names are, has no line of its own:"
          " its body's time is missing, its imports' are counted)")
    return out


def profile_strace(tree: Tree, root: Path, wasm: Path, work: Path) -> dict:
    strace = shutil.which("strace")
    if strace is None:
        print("strace: not installed, syscall counts skipped (apt-get install strace)")
        return {"skipped": "strace not installed"}
    trace = work / "hit.strace"
    argv = child("profile", "strace", root, wasm, "[]")
    subprocess.run([strace, "-f", "-qq", "-o", str(trace), *argv], env=env_for(tree), check=True)
    lines = trace.read_text().splitlines()
    marks = [i for i, line in enumerate(lines) if "/wasmcache-bench-hit-" in line]
    if len(marks) != 2:
        fail(f"strace: the hit's two marker calls were not found in {trace}")
    counts: dict[str, int] = {}
    for line in lines[marks[0] + 1:marks[1]]:
        if m := re.match(r"(?:\d+\s+)?(\w+)\(", line):
            counts[m[1]] = counts.get(m[1], 0) + 1
    summary = subprocess.run([strace, "-f", "-c", "-o", str(work / "c.txt"), *argv], env=env_for(tree), check=True)
    total = re.search(r"(\d+)\s+(\d+)?\s*total", (work / "c.txt").read_text())
    out = {"hit": dict(sorted(counts.items(), key=lambda kv: -kv[1])), "hit_total": sum(counts.values()),
           "process_total": int(total[1]) if total and summary.returncode == 0 else None}
    print(f"strace: {out['hit_total']} syscalls in the hit ({', '.join(f'{k} {v}' for k, v in out['hit'].items())});"
          f" {out['process_total']} in the whole process (strace -c)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profiler", description=__doc__.split("\n\n")[0])
    parser.add_argument("modes", nargs="*", help=f"among {', '.join(MODES)} (default: all)")
    parser.add_argument("--src", type=Path, help="the src/ to measure (default: this checkout's)")
    parser.add_argument("--yosys", action="store_true", help="profile a hit of the 49 MB Yosys module")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if unknown := set(args.modes) - set(MODES):
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    tree = Tree("src", args.src.resolve()) if args.src else current_tree()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="wasmcache-profile-") as tmp:
        work = Path(tmp)
        if args.yosys:
            wasm = yosys_wasm()
        else:
            import wasmtime

            wasm = work / "tiny.wasm"
            wasm.write_bytes(bytes(wasmtime.wat2wasm(TINY_WAT)))
        root = work / "root"
        try:
            sample((child("lib_hit", root, wasm), env_for(tree)))  # the miss: every later load is a hit
        except BenchError as exc:
            fail(f"the warming load failed: {str(exc).splitlines()[-1]}")
        for mode in args.modes or MODES:
            if mode == "cprofile":
                results[mode] = profile_cprofile(tree, root, wasm)
            elif mode == "importtime":
                results[mode] = profile_importtime(tree, root, wasm)
            else:
                results[mode] = profile_strace(tree, root, wasm, work)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
