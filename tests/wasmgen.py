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


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if (n == 0 and not byte & 0x40) or (n == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _section(code: int, payload: bytes) -> bytes:
    return bytes([code]) + _leb(len(payload)) + payload


@functools.cache
def data_module(answer: int, size: int) -> bytes:
    """A module with a `size`-byte data segment (a large .cwasm that compiles in milliseconds)."""
    pages = max(1, -(-size // 65536))
    body = b"\x00" + b"\x41" + _sleb(answer) + b"\x0b"  # no locals; i32.const answer; end
    name = b"answer"
    data = bytes((i * 31 + answer) & 0xFF for i in range(min(size, 4096))) * (size // 4096 + 1)
    return (
        b"\0asm\x01\0\0\0"
        + _section(1, b"\x01\x60\x00\x01\x7f")  # one type: [] -> [i32]
        + _section(3, b"\x01\x00")  # one function of type 0
        + _section(5, b"\x01\x00" + _leb(pages))  # one memory
        + _section(7, b"\x01" + _leb(len(name)) + name + b"\x00\x00")  # export "answer" = func 0
        + _section(10, b"\x01" + _leb(len(body)) + body)
        + _section(11, b"\x01\x00\x41\x00\x0b" + _leb(size) + data[:size])  # active segment at 0
    )
