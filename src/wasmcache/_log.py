"""The library's logger, `logging.getLogger("wasmcache")`, without importing `logging` until it matters.

`import logging` costs ~4 ms, paid by every process that loads a module, and `wasmtime` does not
import it. While nothing in the process has imported `logging`, nothing has configured it either:
a debug or info record could reach no handler (the last-resort handler prints warnings and up),
so such calls return at once; a warning imports `logging` and goes through the real logger.
Measured cost this saves: ~4 ms per `wasmcache run` hit (issue 10's start-up goal).

A guest (the drop-in that `wasmcache exec` or $WASMCACHE_AUTO put into a program that never asked
for wasmcache) logs nothing through `logging` at all: the program's root logger, its handlers and
its format are the program's, and a `logging.basicConfig(level=logging.INFO)` must not start
printing wasmcache's hits (issue 14). There, `become_guest()` routes every record to the process's
stderr as `wasmcache[PID]: ...`, a line no one can take for the program's own: a warning once per
process and cause (its message template), info and debug only when $WASMCACHE_VERBOSE asks
(`wasmcache -v exec` sets it to 1, `--debug exec` to 2).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Mapping

_WARNING: Final = 30
_NAME: Final = "wasmcache"
PROGRESS: Final = "wasmcache_progress"  # the attribute that marks a progress record


class _Guest:
    """Where a guest's records go: stderr, prefixed; warnings once per cause; the rest on request."""

    __slots__ = ("said", "threshold")

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.said: set[str] = set()

    def emit(self, level: int, msg: str, args: tuple[object, ...], *, progress: bool = False,
             cause: str | None = None) -> None:
        if level < self.threshold and not (progress and _stderr_is_a_terminal()):
            return
        if level >= _WARNING:
            cause = cause or msg  # once per process and cause: the template, not its arguments, unless named
            if cause in self.said:
                return
            self.said.add(cause)
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):
            text = f"{msg} {args!r}"
        text = text.removeprefix("wasmcache: ")
        if level >= _WARNING:
            text = "warning: " + text
        import _wasmcache_hook  # noqa: PLC0415 - loaded already: it made this process a guest

        _wasmcache_hook.say(text)


_guest: _Guest | None = None


_progress_to_terminal = False


def show_progress_on_terminal() -> None:
    """The CLI's switch: progress records (a download, a long compile) go to stderr as one line each when
    it is a terminal, whatever logging says; elsewhere they stay INFO records."""
    global _progress_to_terminal  # noqa: PLW0603 - one switch per process
    _progress_to_terminal = _stderr_is_a_terminal()


def _stderr_is_a_terminal() -> bool:
    """A person may be watching: progress lines (a download, a long compile) are worth a line there."""
    try:
        return os.isatty(2)
    except OSError:
        return False


def verbosity_threshold(environ: Mapping[str, str]) -> int:
    """$WASMCACHE_VERBOSE as the lowest level a guest prints: 2 (or debug) debug, on (1, yes ...) info."""
    import _wasmcache_hook  # noqa: PLC0415 - the switches' one reading

    return {2: 10, 1: 20}.get(_wasmcache_hook.verbosity(environ), _WARNING)


def become_guest() -> None:
    """From now on this process's records go to stderr as a guest's (see the module docstring)."""
    global _guest  # noqa: PLW0603 - one switch per process
    if _guest is None:
        _guest = _Guest(verbosity_threshold(os.environ))


def end_guest() -> None:
    """The program installed wasmcache itself: its own logging decides again."""
    global _guest  # noqa: PLW0603 - one switch per process
    _guest = None


def is_guest() -> bool:
    return _guest is not None


def guest_verbose() -> bool:
    """A guest asked to print info lines (so, e.g., a summary at exit is worth computing)."""
    return _guest is not None and _guest.threshold <= 20


_holding: list[tuple[int, str, tuple[object, ...]]] | None = None


class held:  # noqa: N801 - used like a context manager function, without importing contextlib
    """Hold back every record while the block runs (the caller decides afterwards: `replay` or drop).

    The drop-in opens its root this way: whether the core's words about a root it cannot create
    are true for the program depends on what the drop-in does next (issue 14).
    """

    def __init__(self) -> None:
        self.records: list[tuple[int, str, tuple[object, ...]]] = []

    def __enter__(self) -> list[tuple[int, str, tuple[object, ...]]]:
        global _holding  # noqa: PLW0603 - one holder at a time (the drop-in's install, under its lock)
        _holding = self.records
        return self.records

    def __exit__(self, *_exc: object) -> None:
        global _holding  # noqa: PLW0603
        _holding = None


def replay(records: list[tuple[int, str, tuple[object, ...]]]) -> None:
    for level, msg, args in records:
        _Log._log(level, msg, args)  # noqa: SLF001


class _Log:
    """The subset of `logging.Logger` wasmcache uses, forwarded to the real "wasmcache" logger."""

    __slots__ = ()

    def debug(self, msg: str, *args: object) -> None:
        self._log(10, msg, args)

    def info(self, msg: str, *args: object) -> None:
        self._log(20, msg, args)

    def progress(self, msg: str, *args: object) -> None:
        """An INFO record a person waiting at a terminal should see (a download, a long compile): marked
        `wasmcache_progress`, so the CLI and the drop-in show it on a terminal even without -v."""
        self._log(20, msg, args, progress=True)

    def warning(self, msg: str, *args: object) -> None:
        self._log(_WARNING, msg, args)

    def warning_about(self, subject: str, msg: str, *args: object) -> None:
        """A warning whose cause is `subject` (a substituter, a tool's declaration): a guest says it once
        per subject, where `warning` is said once per template."""
        self._log(_WARNING, msg, args, cause=f"{msg}\0{subject}")

    def error(self, msg: str, *args: object) -> None:
        self._log(40, msg, args)

    @staticmethod
    def _log(level: int, msg: str, args: tuple[object, ...], *, progress: bool = False,
             cause: str | None = None) -> None:
        holding = _holding
        if holding is not None:
            holding.append((level, msg, args))
            return
        guest = _guest
        if guest is not None:
            guest.emit(level, msg, args, progress=progress, cause=cause)
            return
        if progress and _progress_to_terminal:
            try:
                sys.stderr.write((msg % args if args else msg) + "\n")
                sys.stderr.flush()
            except (OSError, ValueError, TypeError, AttributeError):
                pass
            return
        if "logging" not in sys.modules and level < _WARNING:
            return  # logging was never imported, so never configured: this record goes nowhere
        import logging  # noqa: PLC0415 - imported already, or a warning worth its import

        logger = logging.getLogger(_NAME)
        if logger.isEnabledFor(level):
            # The record names wasmcache's caller, not this file.
            logger.log(level, msg, *args, stacklevel=4 if progress else 3,
                       extra={PROGRESS: True} if progress else None)


log: Final = _Log()
