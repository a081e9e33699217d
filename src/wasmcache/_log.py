"""The library's logger, `logging.getLogger("wasmcache")`, without importing `logging` until it matters.

`import logging` costs ~4 ms, paid by every process that loads a module, and `wasmtime` does not
import it. While nothing in the process has imported `logging`, nothing has configured it either:
a debug or info record could reach no handler (the last-resort handler prints warnings and up),
so such calls return at once; a warning imports `logging` and goes through the real logger.
Measured cost this saves: ~4 ms per `wasmcache run` hit (issue 10's start-up goal).
"""

from __future__ import annotations

import sys
from typing import Final

_WARNING: Final = 30
_NAME: Final = "wasmcache"
PROGRESS: Final = "wasmcache_progress"  # the attribute that marks a progress record


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

    def error(self, msg: str, *args: object) -> None:
        self._log(40, msg, args)

    @staticmethod
    def _log(level: int, msg: str, args: tuple[object, ...], *, progress: bool = False) -> None:
        if "logging" not in sys.modules and level < _WARNING:
            return  # logging was never imported, so never configured: this record goes nowhere
        import logging  # noqa: PLC0415 - imported already, or a warning worth its import

        logger = logging.getLogger(_NAME)
        if logger.isEnabledFor(level):
            # The record names wasmcache's caller, not this file.
            logger.log(level, msg, *args, stacklevel=4 if progress else 3,
                       extra={PROGRESS: True} if progress else None)


log: Final = _Log()
