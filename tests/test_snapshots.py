"""`load_precompiled`: a program's own serialized file is snapshotted, never mapped, at the cost of a map."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import pytest
import wasmtime

import wasmcache
from conftest import run_json
from naive import winch_engine
from wasmgen import answer_module, call_answer, component

if TYPE_CHECKING:
    from pathlib import Path

# Counts wasmtime compiles (Module.__init__ is what every compile goes through), installed before
# wasmcache is imported, so the cache's own calls are counted too.
COUNTED_HIT = """
import json, sys, wasmtime
compiles = []
real = wasmtime.Module.__init__
def counting(self, *args, **kwargs):
    compiles.append(1)
    return real(self, *args, **kwargs)
wasmtime.Module.__init__ = counting
import wasmcache
from wasmgen import call_answer
engine = wasmtime.Engine(wasmtime.Config())  # a program's own engine: nothing remembers its fingerprint
cache = wasmcache.ModuleCache(sys.argv[1], engine=engine)
module = cache.load_precompiled(sys.argv[2])
stats = cache.stats()
print(json.dumps({"answer": call_answer(engine, module), "hits": stats.hits, "compiles": len(compiles)}))
"""


def test_a_snapshot_hit_in_a_fresh_process_compiles_nothing_not_even_the_engine_probe(tmp_path: Path) -> None:
    own = tmp_path / "own.cwasm"
    own.write_bytes(wasmtime.Module(wasmtime.Engine(), answer_module(91)).serialize())
    first = run_json(COUNTED_HIT, str(tmp_path / "root"), str(own))
    assert (first["answer"], first["hits"], first["compiles"]) == (91, 0, 0)
    again = run_json(COUNTED_HIT, str(tmp_path / "root"), str(own))
    assert (again["answer"], again["hits"], again["compiles"]) == (91, 1, 0)
    # Keyed by the artifact's own engine: its namespace is the default engine's, where compiles go too.
    cache = wasmcache.ModuleCache(tmp_path / "root")
    assert [p.parent for p in (tmp_path / "root").glob("ns-*/*.cwasm")] == [cache.namespace_dir]
    assert cache.verify().ok


def test_an_artifact_this_engine_refuses_raises_wasmtimes_error_and_leaves_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    own = tmp_path / "winch.cwasm"
    own.write_bytes(wasmtime.Module(winch_engine(), answer_module(92)).serialize())
    cache = wasmcache.ModuleCache(tmp_path / "root")
    with caplog.at_level(logging.WARNING, logger="wasmcache"), pytest.raises(wasmcache.CompileError) as refused:
        cache.load_precompiled(own)
    assert isinstance(refused.value.wasmtime_error, wasmtime.WasmtimeError)
    assert not list((tmp_path / "root").glob("ns-*/*.cwasm"))
    assert caplog.records == []  # the entry was fine; this engine is another one: no "bad entry"
    assert not (tmp_path / "root" / "quarantine").exists()
    # The engine that wrote it takes the snapshot.
    winch = wasmcache.ModuleCache(tmp_path / "root", engine=winch_engine())
    assert call_answer(winch.engine, winch.load_precompiled(own)) == 92


def test_a_component_artifact_where_a_module_is_expected_is_refused_without_a_trace(tmp_path: Path) -> None:
    engine = wasmtime.Engine()
    from wasmtime.component import Component

    own = tmp_path / "component.cwasm"
    own.write_bytes(Component(engine, component()).serialize())
    cache = wasmcache.ModuleCache(tmp_path / "root", engine=engine)
    with pytest.raises(wasmcache.CompileError):
        cache.load_precompiled(own)  # kind="module"
    assert not list((tmp_path / "root").rglob("*.cwasm"))
    assert not (tmp_path / "root" / "quarantine").exists()
    loaded = cache.load_precompiled(own, kind="component")
    assert isinstance(loaded, Component)
    with pytest.raises(wasmcache.ConfigError, match="kind="):
        cache.load_precompiled(own, kind="x")  # type: ignore[arg-type]
    assert wasmcache.ModuleCache(tmp_path / "root").verify().ok


@pytest.mark.parametrize("bad", ["x", -1, True, None])
def test_lock_timeout_is_validated(tmp_path: Path, bad: object) -> None:
    with pytest.raises(wasmcache.ConfigError, match="lock_timeout"):
        wasmcache.ModuleCache(tmp_path / "root", lock_timeout=bad)  # type: ignore[arg-type]


def test_a_file_that_is_not_an_artifact_raises_wasmtimes_error(tmp_path: Path) -> None:
    wasm = tmp_path / "m.wasm"
    wasm.write_bytes(answer_module(93))
    with pytest.raises(wasmcache.CompileError) as refused:
        wasmcache.ModuleCache(tmp_path / "root").load_precompiled(wasm)
    assert isinstance(refused.value.wasmtime_error, wasmtime.WasmtimeError)
    assert not list((tmp_path / "root").rglob("*.cwasm"))
    assert json.loads(json.dumps(str(refused.value)))  # one printable line
