"""A program that maps its own cache file survives that file being rewritten in place, under the drop-in.

The program is the naive cache of tests/naive.py (the YoWASP pattern): `deserialize_file` of its
own `.cwasm`, and on failure a recompile written back with `open(path, "wb")`. The control runs
the very same program without the drop-in and dies with SIGBUS/SIGSEGV (or computes garbage).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wasmtime

from naive import naive_load, winch_engine
from wasmgen import answer_module

DISRUPT_SECONDS = float(os.environ.get("WASMCACHE_TEST_DISRUPT_SECONDS", "3"))
TESTS = str(Path(__file__).parent)

# Loads its module from its own cache file, says "ready", calls into it until stdin closes.
VICTIM = """
import os, select, sys, wasmtime
from pathlib import Path
if sys.argv[1] == "dropin":
    import wasmcache
    wasmcache.install(sys.argv[3])
# "auto": $WASMCACHE_AUTO in the environment activates it at `import wasmtime` (the startup .pth)
from naive import naive_load
from wasmgen import answer_module, call_answer
engine = wasmtime.Engine()
module = naive_load(Path(sys.argv[2]), engine, answer_module(77, functions=400))
print("ready", flush=True)
calls = 0
while True:
    if call_answer(engine, module) != 77:
        print("wrong answer", flush=True)
        sys.exit(1)
    calls += 1
    if select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.read(1):
        break
print(f"calls {calls}", flush=True)
"""


def run_victim_while_others_rewrite(mode: str, own_cache: Path, root: Path) -> tuple[int, str, int]:
    wasm = answer_module(77, functions=400)
    naive_load(own_cache, wasmtime.Engine(), wasm)  # the program's cache is warm: its start maps the file
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", VICTIM, mode, str(own_cache), str(root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
    # Another wasmtime configuration shares the program's cache: each finds the other's file
    # unusable and rewrites it in place (truncate, then write), as two wasmtime versions do.
    engines = [winch_engine(), wasmtime.Engine()]
    rounds = 0
    deadline = time.monotonic() + DISRUPT_SECONDS
    while time.monotonic() < deadline and proc.poll() is None:
        naive_load(own_cache, engines[rounds % 2], wasm)
        rounds += 1
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out + err, rounds


def test_under_the_drop_in_a_rewritten_own_cache_file_cannot_crash_the_program(tmp_path: Path) -> None:
    code, output, rounds = run_victim_while_others_rewrite("dropin", tmp_path / "own", tmp_path / "wasmcache")
    assert code == 0, f"the program died (exit {code}) after {rounds} in-place rewrites:\n{output}"
    assert rounds >= 3
    assert "calls" in output


def test_control_without_the_drop_in_the_same_program_crashes(tmp_path: Path) -> None:
    code, output, rounds = run_victim_while_others_rewrite("bare", tmp_path / "own", tmp_path / "wasmcache")
    assert code in (-signal.SIGSEGV, -signal.SIGBUS, -signal.SIGILL, 1), (
        f"expected the naive program to crash or miscompute, got exit {code} after {rounds} rewrites:\n{output}")


SNAPSHOT = """
import json, os, sys, wasmtime, wasmcache
from wasmtime.component import Component
from wasmgen import answer_module, component
cls = wasmtime.Module if sys.argv[3] == "module" else Component
engine = wasmtime.Engine()
own = sys.argv[2]
if not os.path.exists(own):
    open(own, "wb").write(cls(engine, answer_module(3) if sys.argv[3] == "module" else component()).serialize())
handle = wasmcache.install(sys.argv[1])
first = cls.deserialize_file(engine, own)
second = cls.deserialize_file(engine, own)
maps = open("/proc/self/maps").read()
s = handle.stats()
print(json.dumps({"own_mapped": own in maps, "root_mapped": sys.argv[1] in maps, "hits": s.hits,
                  "misses": s.misses, "types": [type(first).__name__, type(second).__name__]}))
"""


@pytest.mark.parametrize("kind", ["module", "component"])
def test_deserialize_file_maps_a_snapshot_never_the_programs_file(tmp_path: Path, kind: str) -> None:
    from conftest import run_json

    root, own = tmp_path / "root", tmp_path / f"own {kind}.bin"
    first = run_json(SNAPSHOT, str(root), str(own), kind)
    second = run_json(SNAPSHOT, str(root), str(own), kind)
    name = "Module" if kind == "module" else "Component"
    assert first == {"own_mapped": False, "root_mapped": True, "hits": 1, "misses": 1, "types": [name, name]}
    assert second == {**first, "hits": 2, "misses": 0}  # remembered by the file's identity
    same = own.read_bytes()
    own.write_bytes(same)  # rewritten in place, same bytes: same content, so the same snapshot
    assert run_json(SNAPSHOT, str(root), str(own), kind)["misses"] == 0
    if kind == "module":  # other bytes: a new snapshot, and still never the file itself
        own.write_bytes(wasmtime.Module(wasmtime.Engine(), answer_module(4)).serialize())
        third = run_json(SNAPSHOT, str(root), str(own), kind)
        assert (third["own_mapped"], third["root_mapped"], third["misses"]) == (False, True, 1)


def test_deserialize_file_of_a_foreign_artifact_raises_wasmtime_error(tmp_path: Path) -> None:
    from conftest import run_python

    own = tmp_path / "winch.cwasm"
    own.write_bytes(wasmtime.Module(winch_engine(), answer_module(3)).serialize())
    code = """
    import sys, wasmtime, wasmcache
    wasmcache.install(sys.argv[1])
    try:
        wasmtime.Module.deserialize_file(wasmtime.Engine(), sys.argv[2])
    except wasmtime.WasmtimeError as exc:
        print("refused:", type(exc).__name__)
    """
    assert run_python(code, str(tmp_path / "root"), str(own)).stdout.strip() == "refused: WasmtimeError"
    assert not list((tmp_path / "root").glob("ns-*/*.cwasm"))


def test_classify_tells_entries_snapshots_and_a_programs_own_file_apart(tmp_path: Path) -> None:
    import wasmcache
    from wasmcache._doctor import classify_cwasm

    root = tmp_path / "root"
    engine = wasmtime.Engine()
    own = tmp_path / "0123abcd"  # named like YoWASP's cache files: no suffix
    own.write_bytes(wasmtime.Module(engine, answer_module(5)).serialize())
    cache = wasmcache.ModuleCache(root, engine=engine)
    cache.load(answer_module(6))
    cache.load_precompiled(str(own))
    kinds = sorted(classify_cwasm(str(p)) for p in root.glob("ns-*/*.cwasm"))
    assert kinds == ["entry", "snapshot"]
    assert classify_cwasm(str(own)) == "foreign"
    assert classify_cwasm("/etc/passwd") == "other"
    assert classify_cwasm(str(tmp_path / "missing")) == "other"


@pytest.mark.parametrize("mode", ["dropin", "bare"])
def test_a_live_process_mapping_its_own_cache_file_is_recognisable(tmp_path: Path, mode: str) -> None:
    # What `doctor --pid` needs: the wrapped program maps only our snapshot; the bare one maps its
    # own rewritable file (named without .cwasm, as YoWASP names them).
    from wasmcache._doctor import classify_cwasm

    own = tmp_path / "own"
    naive_load(own, wasmtime.Engine(), answer_module(77, functions=400))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", VICTIM, mode, str(own), str(tmp_path / "root")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        with open(f"/proc/{proc.pid}/maps") as f:
            paths = {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}
        kinds = {classify_cwasm(p) for p in paths if p.startswith(str(tmp_path))}
    finally:
        proc.communicate(timeout=60)
    assert kinds == ({"snapshot"} if mode == "dropin" else {"foreign"})


@pytest.mark.parametrize("mode", ["dropin", "bare"])
def test_doctor_pid_reports_a_program_mapping_its_own_cache_file(tmp_path: Path, mode: str) -> None:
    # A YoWASP-style program maps its own rewritable cache file (named without .cwasm): doctor --pid
    # finds it by content and warns; wrapped, the program maps only our snapshot.
    from conftest import run_cli

    own = tmp_path / "own"
    naive_load(own, wasmtime.Engine(), answer_module(77, functions=400))  # warm: the program maps it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", VICTIM, mode, str(own), str(tmp_path / "root")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        listed = run_cli("doctor", "--pid", str(proc.pid), "--json")
        text = run_cli("doctor", "--pid", str(proc.pid))
    finally:
        proc.communicate(timeout=60)
    mapped = [m for m in json.loads(listed.stdout) if m["path"].startswith(str(tmp_path))]
    assert [(m["origin"], m["state"]) for m in mapped] == [("snapshot" if mode == "dropin" else "foreign", "intact")]
    assert text.returncode == 0
    assert ("a program's own cache" in text.stdout) == (mode == "bare")


def test_doctor_says_whether_this_python_would_activate_the_drop_in(tmp_path: Path) -> None:
    from conftest import run_cli

    off = run_cli("doctor", "--cache-dir", str(tmp_path / "none"), env={"WASMCACHE_AUTO": ""})
    assert "drop-in: $WASMCACHE_AUTO is not on" in off.stdout
    on = run_cli("doctor", "--json", "--cache-dir", str(tmp_path / "none"), env={"WASMCACHE_AUTO": "1"})
    status = json.loads(on.stdout)[-1]["dropin"]
    assert status["auto"] is True
    assert status["would_activate"] is True  # the package's startup .pth is installed in this venv


def test_with_an_unusable_root_the_drop_in_still_never_maps_the_programs_file(tmp_path: Path) -> None:
    # $WASMCACHE_DIR names a file: nothing can be cached, but WASMCACHE_AUTO's promise holds:
    # deserialize_file loads a copy, so the program survives its cache file being rewritten.
    own = tmp_path / "own"
    wasm = answer_module(77, functions=400)
    naive_load(own, wasmtime.Engine(), wasm)
    a_file = tmp_path / "not-a-root"
    a_file.write_text("mine")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
           "WASMCACHE_AUTO": "1", "WASMCACHE_DIR": str(a_file)}
    proc = subprocess.Popen([sys.executable, "-c", VICTIM, "auto", str(own), str(tmp_path / "unused")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    engines = [winch_engine(), wasmtime.Engine()]
    for i in range(6):
        naive_load(own, engines[i % 2], wasm)
    out, err = proc.communicate("x", timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "calls" in out
    assert "never mapped" in err  # one warning says what the drop-in still does
    assert a_file.read_text() == "mine"


def test_doctor_pid_sees_a_truncated_mapping_whatever_its_content(tmp_path: Path) -> None:
    from conftest import run_cli

    own = tmp_path / "own"
    naive_load(own, wasmtime.Engine(), answer_module(77, functions=400))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", HOLD_ONLY, str(next(own.iterdir()))], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        os.truncate(next(own.iterdir()), 0)  # its ELF header is gone too: found by the mapping, not the content
        report = run_cli("doctor", "--pid", str(proc.pid))
    finally:
        proc.kill()
        proc.wait()
    assert report.returncode == 1, report.stdout
    assert "modified-in-place" in report.stdout


HOLD_ONLY = """
import sys, wasmtime
module = wasmtime.Module.deserialize_file(wasmtime.Engine(), sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
"""
