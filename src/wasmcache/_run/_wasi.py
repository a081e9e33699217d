"""What modules and components share: the store (fuel, limits, epochs), WASI and the deadline."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Final

from ._outcome import TRAP_EXIT, RunError, from_wasmtime, say

if TYPE_CHECKING:
    import wasmtime

    from ._args import Options

# Without -W timeout an epoch-interruption engine still needs a deadline, or its code traps at the
# first check (wasmtime 49 sets none and traps): this many ticks is "never".
_NO_DEADLINE: Final = 1 << 62
# After the deadline, wasm code traps at its next epoch check; a guest blocked in a host call (a
# WASI sleep, a read) never reaches one. wasmtime's async runtime abandons such a call; here the
# process ends the same way (same message, exit 134) once this grace period has passed too.
_BLOCKED_GRACE_S: Final = 0.25


def argv0(options: Options, file: str) -> str:
    """What wasmtime passes as argv[0]: --argv0, else the last component of the path as typed."""
    if options.argv0 is not None:
        return options.argv0
    parts = [part for i, part in enumerate(file.split("/")) if part and (part != "." or i == 0)]
    if parts:
        return parts[-1]
    return "/" if file.startswith("/") else file


def wasi_config(options: Options, file: str) -> wasmtime.WasiConfig:
    import wasmtime  # noqa: PLC0415

    argv = [argv0(options, file), *options.guest_args]
    for word in argv:
        _require_utf8(word, f"{file}: failed to convert {_rust_debug(word)} to utf-8 (WASI arguments are UTF-8; "
                            "--argv0 NAME sets argv[0])")
    env: list[tuple[str, str]] = []
    if options.inherit_env:
        for name, value in os.environ.items():
            _require_utf8(name, f"environment variable name {_rust_debug(name)} not valid utf-8")
            _require_utf8(value, f"environment variable {_rust_debug(name)} value {_rust_debug(value)} not valid utf-8")
            env.append((name, value))
    for name, given in options.envs:
        chosen = os.environ.get(name) if given is None else given
        if chosen is None:
            continue  # `--env NAME` of an unset variable leaves it unset in the guest, as in wasmtime
        _require_utf8(name + chosen, f"environment variable `{name}` not valid utf-8")
        env.append((name, chosen))
    config = wasmtime.WasiConfig()
    config.argv = argv
    config.env = env
    if options.inherit_stdin:
        config.inherit_stdin()
    if options.inherit_stdout:
        config.inherit_stdout()
    if options.inherit_stderr:
        config.inherit_stderr()
    for host, guest in options.dirs:
        if not os.path.isdir(host):
            raise RunError(f"--dir {host}{'::' + guest if guest != host else ''}: {host} is not a directory", 2)
        _require_utf8(host + guest, f"--dir {host}: the guest sees UTF-8 paths only")
        try:
            config.preopen_dir(host, guest)
        except wasmtime.WasmtimeError as exc:
            raise RunError(f"--dir {host}: failed to open directory: {exc}", 2) from None
    return config


def _require_utf8(text: str, message: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RunError(message) from None


def _rust_debug(text: str) -> str:
    """`text` quoted as Rust's `{:?}` shows an OsStr: `"h\\xFF.wasm"` for a name that is not UTF-8."""
    return '"' + "".join(_rust_char(char) for char in text) + '"'


def _rust_char(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02X}"
    if char in '"\\':
        return "\\" + char
    return char if char.isprintable() else char.encode("unicode_escape").decode("ascii")


def new_store(engine: wasmtime.Engine, options: Options) -> wasmtime.Store:
    import wasmtime  # noqa: PLC0415

    store = wasmtime.Store(engine)
    if options.fuel is not None:
        store.set_fuel(options.fuel)
    if options.epoch_interruption:
        store.set_epoch_deadline(1 if options.timeout is not None else _NO_DEADLINE)
    if options.limits:
        store.set_limits(**options.limits)
    return store


class Deadline:
    """`-W timeout`: a timer thread that bumps the engine's epoch, so running wasm traps ("interrupt").

    ctypes releases the GIL while wasm runs, so the timer fires on time. Use as a context manager
    around everything that runs guest code (instantiation included, as wasmtime does).
    """

    def __init__(self, engine: wasmtime.Engine, options: Options, file: str) -> None:
        self.engine = engine
        self.seconds = options.timeout
        self.text = options.timeout_text
        self.file = file
        self.passed = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Deadline:  # noqa: PYI034 - never subclassed
        if self.seconds is not None:
            self._thread = threading.Thread(target=self._watch, name="wasmcache-deadline", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def passed_text(self) -> str | None:
        """The deadline as typed, if it passed (for the error message), else None."""
        return self.text if self.passed else None

    def _watch(self) -> None:
        if self.seconds is None or self._done.wait(self.seconds):
            return
        self.passed = True
        self.engine.increment_epoch()
        if self._done.wait(_BLOCKED_GRACE_S):
            return
        say(f"wasmcache: error: {self.file}: wasm trap: interrupt (the -W timeout={self.text} deadline passed "
            "while the guest was blocked in a host call)")
        os._exit(TRAP_EXIT)


def guest_error(exc: Any, file: str, deadline: Deadline) -> int:
    """The exit code for what the guest's run raised (an exit), or the RunError wasmtime would print."""
    return from_wasmtime(exc, file, deadline_passed=deadline.passed_text())
