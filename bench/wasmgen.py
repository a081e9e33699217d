"""Generated modules for the suite, built with the tests' generator (`tests/wasmgen.py`).

Only what the tests' generator lacks is added here: a size-sweep module whose data segment is
pseudo-random rather than a repeated pattern, and a WASI program that exits 0 (the tests' one
exits with argc, which a command runner reports as failure).
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING

from bench._tests import tests_module

if TYPE_CHECKING:
    from pathlib import Path

_gen = tests_module("wasmgen")


def data_module(size: int, seed: int = 1) -> bytes:
    """A valid module of about `size` bytes: one function, one memory and a data segment.

    The tests' `data_module` with its segment's bytes (the module's tail) replaced by pseudo-random
    ones, so zstd (wasmtime's own cache) cannot shrink them to nothing and a digest must really read
    them. It compiles in milliseconds, so the sweep is cheap to set up.
    """
    payload_size = max(size - 64, 1)
    # __wrapped__: the tests' builder is memoized, and a 70 MB module need not live on in this process.
    module = bytearray(_gen.data_module.__wrapped__(seed & 0x3F, payload_size))
    module[-payload_size:] = random.Random(seed).randbytes(payload_size)
    return bytes(module)


def write_data_module(directory: Path, size: int) -> Path:
    """The sweep module of `size` bytes under `directory`, generated once (deterministic)."""
    path = directory / f"data-{size}.wasm"
    if not path.exists() or path.stat().st_size < size * 0.9:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data_module(size))
        os.replace(tmp, path)
    return path


# The tests' WASI_PROGRAM without its argc exit code: prints one line and returns (exit code 0),
# the end-to-end figure's program.
HELLO_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "hello from wasm\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 32)))))
"""


def write_hello(directory: Path) -> Path:
    import wasmtime

    path = directory / "hello.wasm"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(wasmtime.wat2wasm(HELLO_WAT)))
    return path
