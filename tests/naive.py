"""The naive cache this project exists to replace, kept as a control for the safety tests.

It is the pattern seen in current tools: key = a hash of the wasm only; load with
`deserialize_file` (mmap); when that fails (another wasmtime version or compiler wrote the
entry) recompile and rewrite the entry in place with `open(path, "wb")`.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

import wasmtime


def naive_load(root: Path, engine: wasmtime.Engine, wasm: bytes) -> wasmtime.Module:
    root.mkdir(parents=True, exist_ok=True)
    path = root / (hashlib.sha1(wasm).hexdigest() + ".cwasm")
    if path.exists():
        try:
            return wasmtime.Module.deserialize_file(engine, str(path))
        except wasmtime.WasmtimeError:
            pass
    module = wasmtime.Module(engine, wasm)
    with open(path, "wb") as f:  # rewrites a file that running processes have mapped
        f.write(module.serialize())
    return module


def winch_engine() -> wasmtime.Engine:
    config = wasmtime.Config()
    wasmtime._ffi.wasmtime_config_strategy_set(config.ptr(), 2)
    return wasmtime.Engine(config)
