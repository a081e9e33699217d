"""Chaos and crashes (issue #4, items 1 and 5): many processes, four engines, gc, SIGKILLs.

Bounded for CI; set WASMCACHE_CHAOS_SECONDS (default 8) and WASMCACHE_CRASH_ROUNDS (default 12)
for longer runs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import wasmcache
from conftest import run_cli, run_json
from wasmcache._core import lock_path
from wasmcache._lock import KeyLock

CHAOS_SECONDS = float(os.environ.get("WASMCACHE_CHAOS_SECONDS", "8"))
CRASH_ROUNDS = int(os.environ.get("WASMCACHE_CRASH_ROUNDS", "12"))
WORKERS = 5

CONFIGS = {
    "cranelift": {},
    "winch": {"compiler": "winch"},
    "opt-none": {"opt_level": "0"},
    "fuel": {"consume_fuel": True},
}

WORKER = """
import json, os, random, sys, time, wasmtime, wasmcache
from pathlib import Path
root, memo, stop_at, seed = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
configs = json.loads(sys.argv[5])
files = [Path(p) for p in sys.argv[6:]]
rng = random.Random(seed)
engines = {name: wasmcache.EngineSettings(**kw).build(memo_dir=memo) for name, kw in configs.items()}
loads = wrong = 0
while time.time() < stop_at:
    name = rng.choice(sorted(engines))
    path = rng.choice(files)
    expected = int(path.stem.split("-")[1])
    cache = wasmcache.ModuleCache(root, engine=engines[name])  # a new object: every load goes to disk
    source = path if rng.random() < 0.5 else path.read_bytes()
    module = cache.load(source)
    store = wasmtime.Store(cache.engine)
    if configs[name].get("consume_fuel"):
        store.set_fuel(1_000_000)
    got = wasmtime.Instance(store, module, []).exports(store)["answer"](store)
    loads += 1
    print("ok" if got == expected else "bad", flush=True)  # counted even for a worker we SIGKILL
    if got != expected:
        wrong += 1
        print(f"WRONG {path.name} under {name}: {got}", flush=True)
    del module, store  # the next load of this key goes to disk again, not to the in-process table
print(json.dumps({"loads": loads, "wrong": wrong}), flush=True)
sys.exit(1 if wrong else 0)
"""

COLLECTOR = """
import sys, time, wasmcache
root, stop_at = sys.argv[1], float(sys.argv[2])
rounds = 0
while time.time() < stop_at:
    cache = wasmcache.ModuleCache(root)
    cache.gc(max_size=150_000)  # smaller than the working set: constant eviction
    if rounds % 7 == 3:
        cache.clear()
    rounds += 1
    time.sleep(0.01)
print(rounds)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}


def test_chaos_workers_engines_gc_and_sigkills(root: Path, tmp_path: Path) -> None:
    from wasmgen import answer_module

    files = []
    for answer in (101, 102, 103, 104):
        path = tmp_path / f"m-{answer}.wasm"
        path.write_bytes(answer_module(answer, functions=120))
        files.append(str(path))
    memo = tmp_path / "memo"
    for kw in CONFIGS.values():  # validate each configuration once, so workers start fast
        wasmcache.EngineSettings(**kw).build(memo_dir=memo)  # type: ignore[arg-type]
    stop_at = time.time() + CHAOS_SECONDS
    rng = random.Random(1234)

    def spawn(seed: int) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", WORKER, str(root), str(memo), str(stop_at), str(seed),
                                 json.dumps(CONFIGS), *files], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=_env())

    collector = subprocess.Popen([sys.executable, "-c", COLLECTOR, str(root), str(stop_at)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    live = [spawn(seed) for seed in range(WORKERS)]
    finished: list[tuple[subprocess.Popen[str], bool]] = []
    kills = 0
    seed = WORKERS
    while time.time() < stop_at - 1.0:
        time.sleep(rng.uniform(0.2, 0.8))
        victim = live.pop(rng.randrange(len(live)))
        victim.send_signal(signal.SIGKILL)
        kills += 1
        finished.append((victim, True))
        live.append(spawn(seed))
        seed += 1
    finished += [(proc, False) for proc in live]
    loads = 0
    for proc, killed in finished:
        out, err = proc.communicate(timeout=120)
        lines = out.splitlines()
        assert "bad" not in lines, f"a worker computed a wrong answer:\n{out[-2000:]}"
        loads += lines.count("ok")
        if killed and proc.returncode == -signal.SIGKILL:
            continue
        assert proc.returncode == 0, f"worker died with {proc.returncode} (not our SIGKILL):\n{err[-3000:]}"
    c_out, c_err = collector.communicate(timeout=120)
    assert collector.returncode == 0, c_err
    print(f"chaos: {loads} loads verified by {len(finished)} workers ({kills} SIGKILLed), "
          f"{c_out.strip()} gc/clear rounds, 0 wrong answers, 0 other deaths")
    assert kills >= 3
    assert loads > 20
    cache = wasmcache.ModuleCache(root)
    cache.gc()  # reaps the temp files of the workers we killed, whatever their age
    assert not list(root.rglob("*.tmp"))
    report = cache.verify()
    assert report.ok, report.findings


CRASHER = """
import sys, wasmcache
from wasmgen import data_module
cache = wasmcache.ModuleCache(sys.argv[1])
answer = int(sys.argv[2])
print("start", flush=True)
while True:  # compile and publish large entries until killed
    cache.load(data_module(answer, 24 << 20))
    answer += 1
"""


def test_kill_9_during_compile_and_publish_leaves_a_usable_cache(root: Path) -> None:
    rng = random.Random(99)
    orphans_seen = 0
    for round_ in range(CRASH_ROUNDS):
        proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(root), str(1000 + round_ * 100)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "start"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        orphans_seen += len(list(root.rglob("*.tmp")))
    # Every entry that made it is whole; nothing half-written is visible under an entry name.
    cache = wasmcache.ModuleCache(root)
    report = cache.verify()
    assert report.ok, report.findings
    code = """
    import json, sys, wasmcache
    from wasmgen import data_module, call_answer
    cache = wasmcache.ModuleCache(sys.argv[1])
    print(json.dumps(call_answer(cache.engine, cache.load(data_module(1000, 24 << 20)))))
    """
    assert run_json(code, str(root)) == 1000
    cache.gc()
    assert not list(root.rglob("*.tmp")), "temp files of killed writers are reaped by one gc"
    assert cache.verify().ok
    print(f"kills: {CRASH_ROUNDS}, orphaned temp files seen: {orphans_seen}")


def test_gc_never_reaps_a_live_writers_temp_file(root: Path) -> None:
    cache = wasmcache.ModuleCache(root)
    cache.load(b"\0asm\x01\0\0\0")  # create the namespace
    key = "f" * 64
    temp = cache.namespace_dir / f"{key}.0123456789ab.tmp"
    writer_lock = KeyLock(lock_path(cache.namespace_dir, key))
    assert writer_lock.acquire()
    try:
        temp.write_bytes(b"half an entry")
        old = time.time() - 30 * 24 * 3600
        os.utime(temp, (old, old))  # old, but alive: age must not matter
        code = """
        import json, sys, wasmcache
        print(json.dumps(wasmcache.ModuleCache(sys.argv[1]).gc().reaped_temp_files))
        """
        assert run_json(code, str(root)) == 0
        assert temp.exists()
    finally:
        writer_lock.release()
    # The writer is gone (its lock is free): the next gc reaps the file.
    assert cache.gc().reaped_temp_files == 1
    assert not temp.exists()


def test_gc_reaps_dead_writers_temp_files_of_small_files_but_not_a_live_ones(root: Path) -> None:
    import fcntl

    cache = wasmcache.ModuleCache(root)
    cache.load(b"\0asm\x01\0\0\0")
    (root / "digests").mkdir(exist_ok=True)
    (root / "engines").mkdir(exist_ok=True)
    dead = [root / "usage.0123456789ab.tmp", root / "digests" / ("d" * 32 + ".0123456789ab.tmp"),
            root / "engines" / ("e" * 32 + ".0123456789ab.tmp"), cache.namespace_dir / "engine.0123456789ab.tmp"]
    users = [root / "my.0123456789ab.tmp", root / "digests" / "notes.0123456789ab.tmp",
             cache.namespace_dir / "draft.0123456789ab.tmp"]  # only named like temp files: never reaped
    for path in users:
        path.write_text("mine")
    for path in dead:
        path.write_bytes(b"left by a SIGKILLed writer")
    live = root / "usage.ba9876543210.tmp"
    fd = os.open(live, os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what write_small_file_atomically holds while it writes
    try:
        # doctor names each one gc would reap (by gc's own test of the writer's lock), and not the live one
        report = run_cli("doctor", "--json", "--cache-dir", str(root))
        named = {f["path"] for f in json.loads(report.stdout) if f["problem"] == "temp file of a writer that died"}
        assert named == {str(path) for path in dead}, report.stdout
        assert all(path.exists() for path in dead)
        code = """
        import json, sys, wasmcache
        print(json.dumps(wasmcache.ModuleCache(sys.argv[1]).gc().reaped_temp_files))
        """
        assert run_json(code, str(root)) == len(dead)
        assert not any(path.exists() for path in dead)
        assert live.exists()
    finally:
        os.close(fd)
    assert cache.gc().reaped_temp_files == 1
    assert sorted(root.rglob("*.tmp")) == sorted(users)
    assert all(path.read_text() == "mine" for path in users)
