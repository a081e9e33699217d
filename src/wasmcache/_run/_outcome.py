"""How a run ends: exit codes and one-line reasons, as `wasmtime run` decides them.

wasmtime exits with the guest's code for an exit (0..125), 134 (128 + SIGABRT) when the error's
root cause is a trap, and 1 for any other error. Its message is an error chain ("context ...
Caused by: ... cause"); the innermost cause is the real reason ("wasm trap: wasm `unreachable`
instruction executed", "exit with invalid exit status outside of [0..126)"), so that is the one
line printed; `--debug` shows the whole chain.
"""

from __future__ import annotations

import os
from typing import Final

from .._errors import CacheError


class RunError(CacheError):
    """`wasmcache run` failed: print `message` (one line) and exit with `code`; `detail` is for --debug."""

    def __init__(self, message: str, code: int = 1, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.detail = detail


class RunUsageError(CacheError):
    """A `wasmcache run` command line wasmtime would refuse too (exit 2); the message names the option."""


class BadValueError(CacheError):
    """An `--invoke` argument wasmtime would refuse; the message is Rust's ("invalid digit found in string")."""


TRAP_EXIT: Final = 134  # 128 + SIGABRT, what `wasmtime run` exits with after a trap (Unix)
ERROR_EXIT: Final = 1
USAGE_EXIT: Final = 2


def innermost_cause(text: str) -> str:
    """The root cause of a wasmtime error chain, as one line."""
    text = text.split("\nStack backtrace:", 1)[0]
    head, sep, causes = text.rpartition("\nCaused by:\n")
    lines = [line.strip() for line in (causes if sep else text).splitlines() if line.strip()]
    if not lines:
        return head.strip() or "unknown error"
    line = lines[-1] if sep else lines[0]
    number, colon, rest = line.partition(": ")
    return rest if colon and number.isdigit() else line


def from_wasmtime(exc: BaseException, file: str, *, deadline_passed: str | None = None) -> int:
    """The exit code for a wasmtime exception; raises RunError when wasmtime would print an error."""
    code = getattr(exc, "code", None)  # wasmtime.ExitTrap: the guest called proc_exit / wasi:cli/exit
    if isinstance(code, int) and type(exc).__name__ == "ExitTrap":
        return code
    full = _message(exc)
    reason = innermost_cause(full)
    trapped = type(exc).__name__ == "Trap" or reason.startswith("wasm trap:")
    if trapped and deadline_passed is not None and reason.endswith("interrupt"):
        reason = f"{reason} (the -W timeout={deadline_passed} deadline passed)"
    raise RunError(f"{file}: {reason}", TRAP_EXIT if trapped else ERROR_EXIT, full)


def _message(exc: BaseException) -> str:
    message = getattr(exc, "message", None)  # wasmtime.Trap keeps its text there
    text = message if isinstance(message, str) else str(exc)
    return text.strip() or type(exc).__name__


def say(line: str, fd: int = 2) -> None:
    """Write one line to stderr (or `fd`) as raw bytes: file names keep their exact (even non-UTF-8) bytes."""
    import _wasmcache_hook  # noqa: PLC0415 - the one rule for printing a name's bytes

    data = _wasmcache_hook.line_bytes(line.rstrip("\n") + "\n")
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass  # nowhere to report to; the exit code still tells
