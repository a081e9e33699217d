"""A process executing code from a mapped entry survives everything others do to the cache.

Each property runs twice: against wasmcache, and against the naive cache (tests/naive.py) as a
control that shows the very same harness does catch the failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wasmtime

import wasmcache
from conftest import run_json
from naive import naive_load, winch_engine
from wasmgen import answer_module, call_answer

DISRUPT_SECONDS = float(os.environ.get("WASMCACHE_TEST_DISRUPT_SECONDS", "3"))

# A child that loads the module, says "ready", then calls into the mapped code until told to stop
# (stdin closes). Exit 0: every answer right; exit 1: a wrong answer; a signal: it crashed.
RUNNER = """
import sys, wasmtime
from pathlib import Path
from wasmgen import answer_module, call_answer
loader, root, answer = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
wasm = answer_module(answer, functions=400)
if loader == "wasmcache":
    import wasmcache
    cache = wasmcache.ModuleCache(root)
    engine, module = cache.engine, cache.load(wasm)
else:
    from naive import naive_load
    engine = wasmtime.Engine()
    module = naive_load(root, engine, wasm)
print("ready", flush=True)
import select, os
calls = 0
while True:
    if call_answer(engine, module) != answer:
        print("wrong answer", flush=True)
        sys.exit(1)
    calls += 1
    if select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.read(1):
        break
print(f"calls {calls}", flush=True)
"""


def start_runner(loader: str, root: Path, answer: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, loader, str(root), str(answer)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
    return proc


def stop_runner(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = proc.communicate(timeout=60)  # closes stdin: the runner's signal to stop
    return proc.returncode, out + err


def test_a_mapped_entry_survives_clear_gc_and_republish_in_a_loop(root: Path) -> None:
    wasm = answer_module(77, functions=400)
    wasmcache.ModuleCache(root).load(wasm)  # so the runner maps the entry, as on any warm start
    runner = start_runner("wasmcache", root, 77)
    rounds = 0
    deadline = time.monotonic() + DISRUPT_SECONDS
    while time.monotonic() < deadline:
        cache = wasmcache.ModuleCache(root)
        cache.clear()
        cache.load(wasm)  # recompile and republish the same key
        cache.gc(0)
        wasmcache.ModuleCache(root).load(wasm)
        # Another engine configuration compiling the same wasm into the same root.
        other = wasmcache.ModuleCache(root, engine=winch_engine())
        other.load(wasm)
        rounds += 1
    code, output = stop_runner(runner)
    assert code == 0, f"runner died (code {code}) after {rounds} rounds of clear/gc/republish:\n{output}"
    assert rounds >= 3


def test_control_the_naive_cache_crashes_in_the_same_harness(tmp_path: Path) -> None:
    # Two wasmtime configurations (Cranelift and Winch here; two wasmtime versions in the field)
    # share the naive cache: each finds the other's entry unusable and rewrites it in place.
    root = tmp_path / "naive"
    wasm = answer_module(77, functions=400)
    naive_load(root, wasmtime.Engine(), wasm)  # so the runner maps the entry, as on any warm start
    runner = start_runner("naive", root, 77)
    engines = [winch_engine(), wasmtime.Engine()]
    deadline = time.monotonic() + DISRUPT_SECONDS
    rounds = 0
    while time.monotonic() < deadline and runner.poll() is None:
        naive_load(root, engines[rounds % 2], wasm)
        rounds += 1
    code, output = stop_runner(runner)
    assert code in (-signal.SIGSEGV, -signal.SIGBUS, -signal.SIGILL, 1), (
        f"the naive cache was expected to crash or miscompute, got exit {code} after {rounds} rewrites:\n{output}")


@pytest.mark.parametrize("loader", ["wasmcache", "naive"])
def test_another_modules_cwasm_swapped_in_under_a_key_is_never_served(root: Path, loader: str) -> None:
    wasm_a, wasm_b = answer_module(1001), answer_module(2002)
    engine = wasmtime.Engine()
    if loader == "wasmcache":
        cache = wasmcache.ModuleCache(root, engine=engine)
        cache.load(wasm_a)
        cache.load(wasm_b)
        entry_a = cache.entry_path(cache.key_for(wasm_a))
        entry_b = cache.entry_path(cache.key_for(wasm_b))
    else:
        naive_load(root, engine, wasm_a)
        naive_load(root, engine, wasm_b)
        import hashlib
        entry_a = root / (hashlib.sha1(wasm_a).hexdigest() + ".cwasm")
        entry_b = root / (hashlib.sha1(wasm_b).hexdigest() + ".cwasm")
    # Someone copies B's compiled code over A's entry (a bad sync, a restore, a confused script).
    swapped = entry_a.with_suffix(".swap")
    shutil.copyfile(entry_b, swapped)
    os.replace(swapped, entry_a)
    code = """
    import json, sys, wasmtime
    from pathlib import Path
    from wasmgen import answer_module, call_answer
    if sys.argv[1] == "wasmcache":
        import wasmcache
        cache = wasmcache.ModuleCache(sys.argv[2])
        engine, module = cache.engine, cache.load(answer_module(1001))
        extra = {"compiles": cache.stats().compiles}
    else:
        from naive import naive_load
        engine = wasmtime.Engine()
        module, extra = naive_load(Path(sys.argv[2]), engine, answer_module(1001)), {}
    print(json.dumps({"answer": call_answer(engine, module), **extra}))
    """
    result = run_json(code, loader, str(root))
    if loader == "naive":
        assert result["answer"] == 2002, "control: the naive cache serves the swapped module's code"
        return
    assert result == {"answer": 1001, "compiles": 1}
    assert list((root / "quarantine").glob(f"{entry_a.stem}*")), "the swapped file is kept aside"
    assert wasmcache.ModuleCache(root).verify().ok


def test_an_entry_rewritten_in_place_is_never_mapped(root: Path) -> None:
    wasm = answer_module(5)
    cache = wasmcache.ModuleCache(root)
    cache.load(wasm)
    entry = cache.entry_path(cache.key_for(wasm))
    entry.chmod(0o644)
    data = bytearray(entry.read_bytes())
    text_middle = len(data) // 2
    data[text_middle : text_middle + 64] = os.urandom(64)
    with open(entry, "r+b") as f:  # in place: same inode, new content
        f.write(data)
    fresh = wasmcache.ModuleCache(root)
    assert call_answer(fresh.engine, fresh.load(wasm)) == 5
    assert fresh.stats().compiles == 1


def test_a_copied_root_is_verified_by_content_then_trusted(root: Path, tmp_path: Path) -> None:
    wasm = answer_module(6)
    wasmcache.ModuleCache(root).load(wasm)
    copy = tmp_path / "restored"
    shutil.copytree(root, copy)  # new inodes and ctimes: like a CI cache restore or rsync
    cache = wasmcache.ModuleCache(copy)
    assert call_answer(cache.engine, cache.load(wasm)) == 6
    assert (cache.stats().hits, cache.stats().compiles) == (1, 0)
    assert not list((copy / "quarantine").glob("*"))


def test_n_processes_cold_starting_one_module_compile_it_once(root: Path, tmp_path: Path) -> None:
    wasm = tmp_path / "heavy.wasm"
    from wasmgen import heavy_module
    wasm.write_bytes(heavy_module(31))
    code = """
    import json, sys, time, wasmcache
    from wasmgen import call_answer
    cache = wasmcache.ModuleCache(sys.argv[1])
    engine = cache.engine
    while time.time() < float(sys.argv[3]):  # start together
        time.sleep(0.001)
    module = cache.load(sys.argv[2])
    print(json.dumps({"compiles": cache.stats().compiles, "answer": call_answer(engine, module)}))
    """
    results = run_parallel(code, 4, str(root), str(wasm))
    assert [r["answer"] for r in results] == [31] * 4
    assert sum(r["compiles"] for r in results) == 1


def test_control_without_the_lock_every_process_compiles(tmp_path: Path) -> None:
    wasm = tmp_path / "heavy.wasm"
    from wasmgen import heavy_module
    wasm.write_bytes(heavy_module(32))
    code = """
    import json, sys, time, wasmtime
    from pathlib import Path
    from naive import naive_load
    engine = wasmtime.Engine()
    compiles = 0
    real = wasmtime.Module.__init__
    def counting(self, *a, **k):
        global compiles
        compiles += 1
        real(self, *a, **k)
    wasmtime.Module.__init__ = counting
    while time.time() < float(sys.argv[3]):
        time.sleep(0.001)
    naive_load(Path(sys.argv[1]), engine, Path(sys.argv[2]).read_bytes())
    print(json.dumps({"compiles": compiles}))
    """
    results = run_parallel(code, 4, str(tmp_path / "naive"), str(wasm))
    assert sum(r["compiles"] for r in results) > 1


def run_parallel(code: str, n: int, *args: str) -> list[dict[str, int]]:
    import json
    import textwrap
    start_at = str(time.time() + 3.0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args, start_at], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(n)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_a_bad_entry_found_while_holding_the_key_lock_is_repaired_not_waited_on(root: Path) -> None:
    # A writer (another thread here) holds the key while our load waits; it leaves a record and
    # an entry that do not match. Our re-check under the lock must repair it itself: taking the
    # lock again on another fd would wait for ourselves (flock is per open file).
    import threading

    from wasmcache._core import Record, lock_path, record_path, write_record
    from wasmcache._lock import KeyLock

    cache = wasmcache.ModuleCache(root, lock_timeout=5)
    wasm = answer_module(88)
    key = cache.key_for(wasm)
    cache.namespace_dir.mkdir(parents=True, exist_ok=True)
    writer = KeyLock(lock_path(cache.namespace_dir, key))
    assert writer.acquire()
    started = threading.Event()

    def load() -> None:
        started.set()
        results.append(call_answer(cache.engine, cache.load(wasm)))

    results: list[int] = []
    loader = threading.Thread(target=load)
    loader.start()
    started.wait()
    time.sleep(0.3)  # the loader found nothing and now waits for the key
    junk = wasmtime.Module(cache.engine, answer_module(99)).serialize()
    write_record(record_path(cache.namespace_dir, key),
                 Record(key=key, kind="module", wasm_digest="0" * 64, content_digest="1" * 64, size=len(junk),
                        identity=None, source="x", wasmtime_version="?", created=0.0))
    cache.entry_path(key).write_bytes(junk)
    writer.release()
    loader.join(timeout=60)
    assert results == [88]
    reasons = [p.read_text() for p in (root / "quarantine").glob("*.why")]
    assert any("does not match its record" in r for r in reasons), reasons
