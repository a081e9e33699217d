"""The oldest supported wasmtime (40) and the newest share one root (issue #4, item 6).

A second virtualenv with wasmtime 40 runs wasmcache from this source tree. Each version keeps to
its own namespace: neither reads nor rewrites the other's entries, and a process of each keeps
running code mapped from its entry while the other version compiles, collects and clears.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import wasmcache

OLDEST = "40.0.0"
SRC = str(Path(wasmcache.__file__).resolve().parent.parent)
TESTS = str(Path(__file__).resolve().parent)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def old_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    venv = tmp_path_factory.mktemp("wasmtime-oldest") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", f"wasmtime=={OLDEST}", "blake3", "platformdirs"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"cannot install wasmtime {OLDEST} into a second venv:\n{done.stderr[-2000:]}")
    return python


def _run(python: str, code: str, *args: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, TESTS])}
    proc = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


LOAD = """
import json, sys, importlib.metadata as md, wasmcache, wasmtime
from wasmgen import call_answer
wasm = bytes(wasmtime.wat2wasm(open(sys.argv[2]).read()))
cache = wasmcache.ModuleCache(sys.argv[1])
module = cache.load(wasm)
print(json.dumps({"answer": call_answer(cache.engine, module), "compiles": cache.stats().compiles,
                  "version": md.version("wasmtime"), "namespace": cache.namespace_dir.name,
                  "ok": cache.verify().ok}))
"""

HOLD = """
import sys, time, wasmcache, wasmtime
from wasmgen import call_answer
wasm = bytes(wasmtime.wat2wasm(open(sys.argv[2]).read()))
cache = wasmcache.ModuleCache(sys.argv[1])
module = cache.load(wasm)
print("ready", flush=True)
stop = time.time() + float(sys.argv[3])
calls = 0
while time.time() < stop:
    assert call_answer(cache.engine, module) == 4242
    calls += 1
print(calls, flush=True)
"""

CHURN = """
import json, sys, wasmcache, wasmtime
wasm = bytes(wasmtime.wat2wasm(open(sys.argv[2]).read()))
for _ in range(int(sys.argv[3])):
    cache = wasmcache.ModuleCache(sys.argv[1])
    cache.clear()
    cache.load(wasm)
    cache.gc(0)
    wasmcache.ModuleCache(sys.argv[1]).load(wasm)
print(json.dumps({"done": True}))
"""


def _answer_wat(path: Path, functions: int) -> Path:
    """WAT text (each wasmtime version compiles it with its own wat2wasm) whose `answer` is 4242."""
    lines = ["(module"]
    lines += [f"  (func $f{i} (param i32) (result i32) local.get 0 i32.const 1 i32.add)" for i in range(functions)]
    calls = " ".join(f"call $f{i}" for i in range(functions - 1))
    lines.append(f'  (func (export "answer") (result i32) i32.const {4242 - (functions - 1)} {calls}))')
    path.write_text("\n".join(lines))
    return path


def _snapshot(namespace: Path) -> dict[str, tuple[int, int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns) for p in namespace.glob("*.cwasm")}


def test_oldest_and_newest_wasmtime_share_one_root(old_python: str, root: Path, tmp_path: Path) -> None:
    wat = _answer_wat(tmp_path / "m.wat", functions=200)
    new = _run(sys.executable, LOAD, str(root), str(wat))
    old = _run(old_python, LOAD, str(root), str(wat))
    assert new["version"] != old["version"] == OLDEST
    assert new["answer"] == old["answer"] == 4242
    assert new["compiles"] == old["compiles"] == 1  # the old version did not take the new one's entry
    assert new["namespace"] != old["namespace"]
    # Second round: each one hits its own entry, and neither touched the other's.
    new_ns, old_ns = root / str(new["namespace"]), root / str(old["namespace"])
    before = (_snapshot(new_ns), _snapshot(old_ns))
    assert _run(old_python, LOAD, str(root), str(wat))["compiles"] == 0
    assert _run(sys.executable, LOAD, str(root), str(wat))["compiles"] == 0
    assert (_snapshot(new_ns), _snapshot(old_ns)) == before
    assert new["ok"]
    assert old["ok"]


def test_a_process_of_each_version_survives_the_other_churning(old_python: str, root: Path, tmp_path: Path) -> None:
    wat = _answer_wat(tmp_path / "m.wat", functions=300)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, TESTS])}
    for python in (sys.executable, old_python):  # warm both namespaces, so the holders map entries
        _run(python, LOAD, str(root), str(wat))
    holders = []
    for python in (sys.executable, old_python):
        proc = subprocess.Popen([python, "-c", HOLD, str(root), str(wat), "6"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        holders.append(proc)
    _run(old_python, CHURN, str(root), str(wat), "5")
    _run(sys.executable, CHURN, str(root), str(wat), "5")
    for proc in holders:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"holder died ({proc.returncode}):\n{err[-2000:]}"
        assert int(out.strip()) > 0
