"""Small real wasm programs for the tests, generated from WAT (no binaries checked in)."""

from __future__ import annotations

import functools

import wasmtime


@functools.cache
def answer_module(answer: int, functions: int = 64, body: int = 8) -> bytes:
    """A module whose export `answer` returns `answer` by chaining `functions` functions.

    The code spans many pages of the compiled file, so a caller touches the mapped `.text` all
    over; each module has its own answer, so serving another module's code shows up as a wrong
    number. `body` pads each function (bigger code, longer compiles).
    """
    lines = ["(module"]
    for i in range(functions):
        add = 1 if i < functions - 1 else answer - (functions - 1)
        pad = " ".join(f"i32.const {i * 7 + j} drop" for j in range(body))
        lines.append(f"  (func $f{i} (param i32) (result i32) {pad} local.get 0 i32.const {add} i32.add)")
    chain = "i32.const 0 " + " ".join(f"call $f{i}" for i in range(functions))
    lines.append(f'  (func (export "answer") (result i32) {chain})')
    lines.append(")")
    return bytes(wasmtime.wat2wasm("\n".join(lines)))


@functools.cache
def heavy_module(answer: int, functions: int = 1500) -> bytes:
    """A module that takes Cranelift a noticeable time to compile (for the one-compile tests)."""
    return answer_module(answer, functions=functions, body=40)


WASI_PROGRAM = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "hello from wasm\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 32)))
    ;; exit with argc, so a test sees exactly which words reached the guest
    (drop (call $args_sizes (i32.const 8) (i32.const 12)))
    (call $proc_exit (i32.load (i32.const 8))))
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
  (func (export "boom") unreachable)
)
"""


def wasi_program() -> bytes:
    return bytes(wasmtime.wat2wasm(WASI_PROGRAM))


COMPONENT = """
(component
  (core module $m (func (export "f") (result i32) i32.const 7))
  (core instance $i (instantiate $m))
  (func (export "f") (result u32) (canon lift (core func $i "f")))
)
"""


def component() -> bytes:
    return bytes(wasmtime.wat2wasm(COMPONENT))


def call_answer(engine: wasmtime.Engine, module: wasmtime.Module) -> int:
    store = wasmtime.Store(engine)
    instance = wasmtime.Instance(store, module, [])
    result = instance.exports(store)["answer"](store)
    assert isinstance(result, int)
    return result
