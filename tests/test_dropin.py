"""`wasmcache.install()`: wasmtime's own constructors served by the cache (issue 9).

Every cross-process property is checked in fresh interpreters; the in-process tests always
uninstall (fixture), so the rest of the suite sees wasmtime as it is.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import wasmtime

import wasmcache
from conftest import run_json, run_python
from wasmgen import answer_module, call_answer, component


@pytest.fixture
def dropin(root: Path) -> Any:
    handle = wasmcache.install(root)
    yield handle
    wasmcache.uninstall()


def entries(root: Path) -> list[Path]:
    return sorted(root.glob("ns-*/*.cwasm"))


LOAD = """
import json, sys, wasmtime, wasmcache
from naive import winch_engine
from wasmgen import answer_module, call_answer
handle = wasmcache.install(sys.argv[1])
how, engine_kind = sys.argv[2], sys.argv[3]
if engine_kind == "winch":
    engine = winch_engine()
else:
    config = wasmtime.Config()
    if engine_kind == "fuel":
        config.consume_fuel = True
    elif engine_kind == "epoch":
        config.epoch_interruption = True
    elif engine_kind == "exceptions":
        config.wasm_exceptions = False  # on by default since wasmtime 50: off is the other engine
    engine = wasmtime.Engine(config)
if how == "bytes":
    module = wasmtime.Module(engine, answer_module(41))
elif how == "wat":
    module = wasmtime.Module(engine, '(module (func (export "answer") (result i32) i32.const 41))')
else:
    module = wasmtime.Module.from_file(engine, sys.argv[4])
answer = call_answer(engine, module) if engine_kind in ("default", "winch", "exceptions") else 41
s = handle.stats()
print(json.dumps({"answer": answer, "hits": s.hits, "misses": s.misses, "compiles": s.compiles,
                  "type": type(module).__name__, "real": isinstance(module, wasmtime.Module)}))
"""


@pytest.mark.parametrize("how", ["bytes", "wat", "path"])
def test_module_constructors_hit_across_two_fresh_processes(root: Path, tmp_path: Path, how: str) -> None:
    wasm = tmp_path / "answer [41] é.wasm"
    wasm.write_bytes(answer_module(41))
    first = run_json(LOAD, str(root), how, "default", str(wasm))
    second = run_json(LOAD, str(root), how, "default", str(wasm))
    assert first == {"answer": 41, "hits": 0, "misses": 1, "compiles": 1, "type": "Module", "real": True}
    assert second == {"answer": 41, "hits": 1, "misses": 0, "compiles": 0, "type": "Module", "real": True}
    assert len(entries(root)) == 1


def test_engines_that_differ_are_keyed_apart(root: Path) -> None:
    kinds = ["default", "fuel", "epoch", "exceptions", "winch"]
    firsts = [run_json(LOAD, str(root), "bytes", kind) for kind in kinds]
    assert [r["compiles"] for r in firsts] == [1] * len(kinds), firsts
    assert len(list(root.glob("ns-*"))) == len(kinds)
    seconds = [run_json(LOAD, str(root), "bytes", kind) for kind in kinds]
    assert [(r["hits"], r["compiles"], r["answer"]) for r in seconds] == [(1, 0, 41)] * len(kinds)


COMPONENT = """
import json, sys, wasmtime, wasmcache
from wasmtime.component import Component, Linker
from wasmgen import component
handle = wasmcache.install(sys.argv[1])
engine = wasmtime.Engine()
comp = Component.from_file(engine, sys.argv[2]) if sys.argv[3] == "path" else Component(engine, component())
store = wasmtime.Store(engine)
instance = Linker(engine).instantiate(store, comp)
answer = instance.get_func(store, "f")(store)
s = handle.stats()
print(json.dumps({"answer": answer, "hits": s.hits, "compiles": s.compiles, "real": isinstance(comp, Component),
                  "serialized": len(comp.serialize()) > 0}))
"""


@pytest.mark.parametrize("how", ["bytes", "path"])
def test_components_hit_across_two_fresh_processes(root: Path, tmp_path: Path, how: str) -> None:
    path = tmp_path / "c.wasm"
    path.write_bytes(component())
    first = run_json(COMPONENT, str(root), str(path), how)
    second = run_json(COMPONENT, str(root), str(path), how)
    assert first == {"answer": 7, "hits": 0, "compiles": 1, "real": True, "serialized": True}
    assert second == {"answer": 7, "hits": 1, "compiles": 0, "real": True, "serialized": True}


COMPONENT_LATER = """
import gc, json, sys, wasmtime, wasmcache
handle = wasmcache.install(sys.argv[1])
late = "wasmtime.component" not in sys.modules
gc.collect()  # the pending hook for wasmtime.component holds its function weakly: it must still be there
from wasmtime.component import Component, Linker
from wasmgen import component
engine = wasmtime.Engine()
comp = Component(engine, component())
instance = Linker(engine).instantiate(wasmtime.Store(engine), comp)
print(json.dumps({"late": late, "hits": handle.stats().hits, "compiles": handle.stats().compiles}))
"""


def test_components_imported_after_install_are_served_too(root: Path) -> None:
    first = run_json(COMPONENT_LATER, str(root))
    second = run_json(COMPONENT_LATER, str(root))
    assert (first, second) == ({"late": True, "hits": 0, "compiles": 1}, {"late": True, "hits": 1, "compiles": 0})


def test_a_returned_module_is_a_real_module_of_that_engine(dropin: Any) -> None:
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, answer_module(3))
    again = wasmtime.Module(engine, answer_module(3))
    assert type(module) is wasmtime.Module
    assert module is not again
    assert [e.name for e in module.exports] == ["answer"]
    assert module.imports == []
    assert wasmtime.Module.deserialize(engine, module.serialize()).exports[0].name == "answer"
    linker = wasmtime.Linker(engine)
    store = wasmtime.Store(engine)
    assert linker.instantiate(store, again).exports(store)["answer"](store) == 3
    module.close()  # closing one object leaves the others (and the cache) working
    assert call_answer(engine, again) == 3
    assert call_answer(engine, wasmtime.Module(engine, answer_module(3))) == 3
    assert dropin.stats()[:3] == (2, 1, 1)


@pytest.mark.parametrize("wasm", [b"\0asm\x01\0\0\0\x01", b"", "(module (func (result i32)))", "(not wat", "component"])
def test_invalid_wasm_raises_what_wasmtime_raises_and_writes_nothing(root: Path, wasm: Any) -> None:
    engine = wasmtime.Engine()
    if wasm == "component":
        wasm = component()  # a component where a module is expected
    with pytest.raises(wasmtime.WasmtimeError) as bare:
        wasmtime.Module(engine, wasm)
    handle = wasmcache.install(root)
    try:
        with pytest.raises(wasmtime.WasmtimeError) as served:
            wasmtime.Module(engine, wasm)
    finally:
        wasmcache.uninstall()
    assert str(served.value) == str(bare.value)
    assert entries(root) == []
    assert handle.stats().compiles == 0


def test_hostile_paths_fail_exactly_as_wasmtime_fails(dropin: Any, tmp_path: Path) -> None:
    engine = wasmtime.Engine()
    odd = os.fsencode(str(tmp_path)) + b"/we\xffird [x] y.wasm"
    with open(odd, "wb") as f:
        f.write(answer_module(12))
    assert call_answer(engine, wasmtime.Module.from_file(engine, odd)) == 12
    with pytest.raises(FileNotFoundError):
        wasmtime.Module.from_file(engine, str(tmp_path / "missing.wasm"))
    with pytest.raises(IsADirectoryError):
        wasmtime.Module.from_file(engine, str(tmp_path))
    with pytest.raises(wasmtime.WasmtimeError):
        wasmtime.Module.from_file(engine, "/dev/null")
    empty = tmp_path / "empty.wasm"
    empty.write_bytes(b"")
    with pytest.raises(wasmtime.WasmtimeError):
        wasmtime.Module.from_file(engine, empty)
    with pytest.raises(TypeError):
        wasmtime.Module(engine, memoryview(answer_module(12)))  # wasmtime refuses a memoryview too
    with pytest.raises(TypeError):
        wasmtime.Module("not an engine", answer_module(12))
    with pytest.raises(wasmtime.WasmtimeError):
        wasmtime.Module.deserialize_file(engine, str(tmp_path / "missing.cwasm"))
    with pytest.raises(wasmtime.WasmtimeError):
        wasmtime.Module.deserialize_file(engine, str(empty))
    assert dropin.stats().compiles == 1


def test_uninstall_restores_wasmtime_exactly(root: Path) -> None:
    from wasmtime.component import Component

    classes = [wasmtime.Module, Component]
    before = [{name: cls.__dict__[name] for name in ("__init__", "from_file", "deserialize_file")} for cls in classes]
    handle = wasmcache.install(root)
    engine = wasmtime.Engine()
    wasmtime.Module(engine, answer_module(1))
    Component(engine, component())
    assert wasmtime.Module.__dict__["__init__"] is not before[0]["__init__"]
    assert Component.__dict__["__init__"] is not before[1]["__init__"]
    assert wasmcache.uninstall() is handle
    after = [{name: cls.__dict__[name] for name in ("__init__", "from_file", "deserialize_file")} for cls in classes]
    assert all(after[i][n] is before[i][n] for i in range(2) for n in before[i])
    count = len(entries(root))
    assert call_answer(engine, wasmtime.Module(engine, answer_module(2))) == 2  # wasmtime's own compile
    assert len(entries(root)) == count
    assert handle.stats()[:3] == (0, 2, 2)  # readable after uninstall, nothing added since
    assert wasmcache.uninstall() is None


def test_install_again_same_handle_other_settings_refused(root: Path, tmp_path: Path) -> None:
    handle = wasmcache.install(root)
    try:
        assert wasmcache.install(root) is handle
        assert wasmcache.install(str(root), mode="mmap", strict=True) is handle
        with pytest.raises(wasmcache.ConfigError, match="uninstall"):
            wasmcache.install(tmp_path / "other")
        with pytest.raises(wasmcache.ConfigError):
            wasmcache.install(root, mode="memory")
        with pytest.raises(wasmcache.ConfigError):
            wasmcache.install(root, mode="mapped")  # type: ignore[arg-type]
    finally:
        wasmcache.uninstall()
    other = wasmcache.install(tmp_path / "other", mode="memory")
    try:
        assert other is not handle
        engine = wasmtime.Engine()
        assert call_answer(engine, wasmtime.Module(engine, answer_module(4))) == 4
        assert call_answer(engine, wasmtime.Module(engine, answer_module(4))) == 4  # a hit, read into memory
        assert other.stats()[:3] == (1, 1, 1)
        assert entries(tmp_path / "other")
    finally:
        wasmcache.uninstall()


def test_threads_share_one_compile_and_one_handle(root: Path) -> None:
    handles: list[Any] = []
    answers: list[int] = []
    engine = wasmtime.Engine()
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        handles.append(wasmcache.install(root))
        answers.append(call_answer(engine, wasmtime.Module(engine, answer_module(55, functions=300))))

    threads = [threading.Thread(target=work) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert answers == [55] * 8
        assert len({id(h) for h in handles}) == 1
        hits, misses, compiles = handles[0].stats()[:3]
        assert (hits + misses, compiles) == (8, 1)  # threads that waited for the compile count as misses
    finally:
        wasmcache.uninstall()


def test_stats_sum_every_engine_even_those_already_collected(dropin: Any) -> None:
    for _ in range(3):
        engine = wasmtime.Engine()
        wasmtime.Module(engine, answer_module(9))
        del engine
        gc.collect()
    keep = wasmtime.Engine()
    wasmtime.Module(keep, answer_module(9))
    stats = dropin.stats()
    assert (stats.hits, stats.misses, stats.compiles, stats.entries) == (3, 1, 1, 1)


def test_wasmcache_own_loads_reach_wasmtime_originals(dropin: Any, tmp_path: Path) -> None:
    own = wasmcache.ModuleCache(tmp_path / "own")
    module = own.load(answer_module(21))
    assert call_answer(own.engine, module) == 21
    assert own.stats().compiles == 1
    assert dropin.stats()[:3] == (0, 0, 0)  # nothing went through the drop-in's root
    assert wasmcache.engine_fingerprint(wasmtime.Engine())  # the probe compile is not cached either
    assert entries(Path(dropin.root)) == []


def test_disabled_by_environment(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WASMCACHE_DISABLE", "1")
    original = wasmtime.Module.__dict__["__init__"]
    handle = wasmcache.install(root)
    try:
        assert not handle.active
        assert wasmtime.Module.__dict__["__init__"] is original
        engine = wasmtime.Engine()
        assert call_answer(engine, wasmtime.Module(engine, answer_module(2))) == 2
    finally:
        wasmcache.uninstall()
    assert not root.exists()


def test_an_unsafe_root_is_refused_at_install(tmp_path: Path) -> None:
    root = tmp_path / "open"
    root.mkdir()
    wasmcache.ModuleCache(root)
    root.chmod(0o777)
    with pytest.raises(wasmcache.UnsafeCacheError, match="chmod o-w"):
        wasmcache.install(root)
    assert wasmcache.uninstall() is None
    assert wasmtime.Module.__dict__["__init__"].__module__ == "wasmtime._module"


def test_importing_wasmcache_imports_neither_wasmtime_nor_the_drop_in() -> None:
    result = run_json("""
    import json, sys, wasmcache
    print(json.dumps([m for m in ("wasmtime", "wasmcache._dropin", "wasmcache._dropin_exec") if m in sys.modules]))
    """)
    assert result == []


def test_fresh_machine_new_home_no_xdg_or_wasmcache_variables(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "WASMCACHE_"))}
    env["HOME"] = str(home)
    code = """
    import json, wasmtime, wasmcache
    from wasmgen import answer_module, call_answer
    handle = wasmcache.install()
    engine = wasmtime.Engine()
    answer = call_answer(engine, wasmtime.Module(engine, answer_module(8)))
    print(json.dumps({"answer": answer, "compiles": handle.stats().compiles, "root": str(handle.root)}))
    """
    import subprocess
    import sys
    import textwrap
    tests = str(Path(__file__).parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [tests, env.get("PYTHONPATH")]))
    results = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                              timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        import json
        results.append(json.loads(proc.stdout.splitlines()[-1]))
    assert [r["compiles"] for r in results] == [1, 0]
    assert results[0]["root"] == str(home / ".cache" / "wasmcache")
    assert results[0]["answer"] == 8


def test_a_program_that_never_changes_its_own_except_clause_keeps_working(root: Path) -> None:
    # The YoWASP pattern swallows WasmtimeError from deserialize_file of a foreign artifact and
    # recompiles; under the drop-in that branch must behave the same.
    proc = run_python("""
    import sys, wasmtime, wasmcache
    from naive import naive_load, winch_engine
    from pathlib import Path
    wasmcache.install(sys.argv[1])
    from wasmgen import answer_module, call_answer
    naive_load(Path(sys.argv[2]), winch_engine(), answer_module(6))        # Winch writes the file
    engine = wasmtime.Engine()
    print(call_answer(engine, naive_load(Path(sys.argv[2]), engine, answer_module(6))))  # refused, recompiled
    """, str(root), str(root.parent / "own-cache"))
    assert proc.stdout.strip() == "6"


def test_another_tools_patch_is_kept_and_restored(root: Path) -> None:
    # Instrumentation installed before the drop-in (a profiler counting compiles) keeps seeing the
    # compiles the drop-in does not serve, and is what uninstall puts back.
    real = wasmtime.Module.__dict__["__init__"]
    seen: list[int] = []

    def counting(self: Any, engine: Any, wasm: Any) -> None:
        seen.append(1)
        real(self, engine, wasm)

    wasmtime.Module.__init__ = counting  # type: ignore[method-assign]
    try:
        wasmcache.install(root)
        engine = wasmtime.Engine()
        with pytest.raises(wasmtime.WasmtimeError):
            wasmtime.Module(engine, b"\0asm\x01\0\0\0\x01")  # refused by the cache's compile
        wasmcache.uninstall()
        assert wasmtime.Module.__dict__["__init__"] is counting
        wasmtime.Module(engine, answer_module(1))
        assert seen == [1]
    finally:
        wasmcache.uninstall()
        wasmtime.Module.__init__ = real  # type: ignore[method-assign]


THREADS_SHARING_AN_ENGINE = """
import sys, threading, wasmtime
use_dropin = sys.argv[1] == "dropin"
if use_dropin:
    import wasmcache
    wasmcache.install(sys.argv[2])
else:
    import wasmcache
    cache = wasmcache.ModuleCache(sys.argv[2])
W = '(module (func (export "f") (result i32) i32.const 7))'
engine = wasmtime.Engine() if use_dropin else cache.engine
errors = []
def work():
    try:
        for _ in range(300):
            module = wasmtime.Module(engine, W) if use_dropin else cache.load(wasmtime.wat2wasm(W))
            store = wasmtime.Store(engine)
            assert wasmtime.Instance(store, module, []).exports(store)["f"](store) == 7
            del module  # its last reference goes here, while other threads look the same key up
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("errors:", errors[:1])
"""


@pytest.mark.parametrize("how", ["dropin", "library"])
def test_threads_sharing_one_engine_never_get_a_module_being_freed(tmp_path: Path, how: str) -> None:
    # A per-process memo that held modules weakly handed one out while wasmtime's __del__ was freeing
    # its native handle in another thread: SIGSEGV in wasmtime_module_clone, or "already closed".
    for attempt in range(3):
        proc = subprocess.run([sys.executable, "-c", THREADS_SHARING_AN_ENGINE, how, str(tmp_path / "root")],
                              capture_output=True, text=True, timeout=120, check=False)
        outcome = (proc.returncode, proc.stdout.strip())
        assert outcome == (0, "errors: []"), (attempt, proc.returncode, proc.stderr[-2000:])


def test_invalid_wasm_raises_as_plain_wasmtime_would_and_leaves_no_file(dropin: Any) -> None:
    # No wasmcache exception as its context, no wasmcache frames first in its traceback, no lock file.
    with pytest.raises(wasmtime.WasmtimeError) as raised:
        wasmtime.Module(wasmtime.Engine(), "(module (func i32.add))")
    assert raised.value.__context__ is None
    assert raised.value.__cause__ is None
    assert not [p for p in dropin.root.rglob("*") if p.is_file() and p.suffix in (".lock", ".cwasm", ".rec")]


def test_a_refused_artifact_names_the_programs_file_not_an_fd(dropin: Any, tmp_path: Path) -> None:
    config = wasmtime.Config()
    config.consume_fuel = True
    own = tmp_path / "fuel.cwasm"
    own.write_bytes(wasmtime.Module(wasmtime.Engine(config), answer_module(3)).serialize())
    with pytest.raises(wasmtime.WasmtimeError) as raised:
        wasmtime.Module.deserialize_file(wasmtime.Engine(), str(own))
    assert "/proc/self/fd" not in str(raised.value)
    assert "fuel" in str(raised.value)
