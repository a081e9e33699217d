"""`serialize()` of what the drop-in served: the entry's bytes, read once, exactly wasmtime's own.

A program that writes `module.serialize()` to its own cache (YoWASP does, on its first start) gets
the same bytes wasmtime's `serialize` would copy out of the mapping, without the native copy; and
never the bytes of a file that replaced the entry after it was mapped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from wasmtime.component import Component

import wasmcache
from wasmgen import answer_module, component


@pytest.fixture
def dropin(root: Path) -> Any:
    handle = wasmcache.install(root)
    yield handle
    wasmcache.uninstall()


def wasmtimes_own(obj: Any) -> bytearray:
    serialize = type(obj).serialize
    own: bytearray = serialize.__wrapped__(obj)  # the original, as the patch keeps it
    return own


def entry_of(obj: Any) -> Path:
    path, _ = obj.__dict__["_wasmcache_entry"]
    return Path(path)


@pytest.mark.parametrize("how", ["bytes", "path", "component"])
def test_serialize_of_a_served_object_is_wasmtimes_own_bytes_read_from_the_entry(dropin: Any, tmp_path: Path,
                                                                                   how: str) -> None:
    engine = wasmtime.Engine()
    wasm = tmp_path / "answer.wasm"
    wasm.write_bytes(answer_module(5))
    for _ in range(2):  # the miss (compiled and published), then the hit
        if how == "bytes":
            served = wasmtime.Module(engine, answer_module(5))
        elif how == "path":
            served = wasmtime.Module.from_file(engine, str(wasm))
        else:
            served = Component(engine, component())
        data = served.serialize()
        assert type(data) is bytearray
        assert data == wasmtimes_own(served)
        assert data == entry_of(served).read_bytes()
    assert dropin.stats()[:3] == (1, 1, 1)


def test_an_entry_replaced_after_it_was_mapped_is_never_what_serialize_returns(dropin: Any, tmp_path: Path) -> None:
    engine = wasmtime.Engine()
    served = wasmtime.Module(engine, answer_module(6))
    own = wasmtimes_own(served)
    entry = entry_of(served)
    other = tmp_path / "other.cwasm"
    other.write_bytes(wasmtime.Module(engine, answer_module(7)).serialize())
    os.replace(other, entry)  # someone renames another artifact over the entry's name
    # The control: reading the entry's path without the identity check returns the other module.
    assert entry.read_bytes() != own
    assert served.serialize() == own
    entry.unlink()  # and an entry collected since: wasmtime's own copy, as always
    assert served.serialize() == own


def test_an_object_wasmcache_did_not_serve_from_an_entry_serializes_as_wasmtime_does(root: Path) -> None:
    original = wasmtime.Module.__dict__["serialize"]
    handle = wasmcache.install(root, mode="memory")
    try:
        engine = wasmtime.Engine()
        served = wasmtime.Module(engine, answer_module(8))  # a private copy: no entry to read
        assert "_wasmcache_entry" not in served.__dict__
        assert served.serialize() == wasmtimes_own(served)
    finally:
        assert wasmcache.uninstall() is handle
    assert wasmtime.Module.__dict__["serialize"] is original  # uninstall puts wasmtime's own back
