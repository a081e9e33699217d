"""From FILE to a module or component out of the cache.

Like `wasmtime run`, FILE may be a binary module or component, WAT text (compiled with
`wasmtime.wat2wasm`, then cached by the binary's digest), `-` for stdin, or a pipe/device
(`<(cat prog.wasm)`). A regular binary file is given to the cache by path, so a hit never reads
it (its digest is remembered by file identity). Anything else is one line naming the file.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any

from .._core import wasm_kind
from ._outcome import USAGE_EXIT, RunError

if TYPE_CHECKING:
    from wasmcache import ModuleCache

    from ._args import Options


def read_input(file: str) -> tuple[str, str | bytes]:
    """("module" | "component", the path or the wasm bytes) for FILE, or a RunError naming it."""
    if file == "-":
        return _classify(_read_all(0, "-"), file)  # fd 0 itself: sys.stdin is None when it was closed
    if "\0" in file:
        raise RunError(f"{file!r}: a path cannot contain a NUL byte", USAGE_EXIT)
    try:
        st = os.stat(file)
    except FileNotFoundError:
        raise RunError(f"{file}: no such file", USAGE_EXIT) from None
    except OSError as exc:
        raise RunError(f"{file}: cannot read: {exc.strerror or exc}", USAGE_EXIT) from None
    if stat.S_ISDIR(st.st_mode):
        raise RunError(f"{file}: is a directory, not a WebAssembly file", USAGE_EXIT)
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise RunError(f"{file}: cannot read: {exc.strerror or exc}", USAGE_EXIT) from None
    try:
        if not stat.S_ISREG(st.st_mode):  # a pipe or a device: read it once, like wasmtime
            return _classify(_read_all(fd, file), file)
        head = os.read(fd, 8)
        if head[:4] == b"\0asm":
            return wasm_kind(head), file
        kind, _ = _classify(head + _read_all(fd, file), file)  # checked (and its kind known) here
    except OSError as exc:
        raise RunError(f"{file}: cannot read: {exc.strerror or exc}", USAGE_EXIT) from None
    finally:
        os.close(fd)
    return kind, file  # WAT text by its path, as a library load keys it: a hit reads no WAT


def _read_all(fd: int, file: str) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    except OSError as exc:
        raise RunError(f"{file}: cannot read: {exc.strerror or exc}", USAGE_EXIT) from None
    return b"".join(chunks)


def _classify(data: bytes, file: str) -> tuple[str, bytes]:
    if not data:
        raise RunError(f"{file}: is empty; expected a WebAssembly module or component (binary or WAT text)",
                       USAGE_EXIT)
    if data[:4] == b"\0asm":
        return wasm_kind(data[:8]), data
    if data[:4] == b"\x7fELF":
        raise RunError(f"{file}: is a precompiled (.cwasm) file; wasmcache run takes .wasm files or WAT text "
                       "and keeps the compiled code itself", USAGE_EXIT)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:
        raise RunError(f"{file}: not a WebAssembly file (no \\0asm header) nor WAT text", USAGE_EXIT)
    import wasmtime  # noqa: PLC0415

    try:
        wasm = bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as exc:
        raise RunError(f"{file}: not a WebAssembly binary, and not valid WAT text: {_wat_reason(str(exc))}",
                       USAGE_EXIT, str(exc)) from None
    return wasm_kind(wasm[:8]), wasm


def _wat_reason(message: str) -> str:
    """ "expected `(` (line 1, column 1)" from wat's multi-line report."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    reason = lines[0] if lines else "cannot parse"
    where = next((line for line in lines if line.startswith("-->")), "")
    parts = where.rsplit(":", 2)  # "--> <anon>:4:56"
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return f"{reason} (line {parts[1]}, column {parts[2]})"
    return reason


def open_cache(options: Options, cache_dir: str | None) -> ModuleCache:
    """The cache for these engine options; the remote tier (and its imports) only if configured."""
    from wasmcache import EngineSettings, ModuleCache  # noqa: PLC0415 - already imported with the package

    from .._remote._settings import remote_arguments  # noqa: PLC0415

    engine = EngineSettings.from_command_line(options.wasm, options.codegen, options.optimize)
    kwargs = remote_arguments(options.remote, options.signing_key, options.trusted_keys, options.substituters,
                              options.substituter_roots)
    # -C cache=n: compile in memory, store nothing.
    return ModuleCache(options.cache_dir or cache_dir, engine=engine, mode="memory" if options.memory else "mmap",
                       enabled=options.cache, **kwargs)


def load(cache: ModuleCache, kind: str, source: str | bytes, file: str) -> Any:
    from wasmcache import CompileError  # noqa: PLC0415

    try:
        return cache.load_component(source) if kind == "component" else cache.load(source)
    except CompileError as exc:
        raise RunError(f"{file}: cannot compile: {exc.reason}", USAGE_EXIT, str(exc)) from None
