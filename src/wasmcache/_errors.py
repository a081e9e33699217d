"""The exception hierarchy: one root, a few precise subclasses.

Every message names the file (or setting) at fault and, where there is one, the fix.
"""

from __future__ import annotations


class CacheError(Exception):
    """Root of every error wasmcache raises on purpose."""


class CompileError(CacheError, ValueError):
    """The input is not a valid WebAssembly module/component for this engine; nothing was cached."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: cannot compile: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self) -> tuple[type[CompileError], tuple[str, str]]:
        # Keep the two-argument constructor picklable across processes.
        return (type(self), (self.source, self.reason))


class ConfigError(CacheError, ValueError):
    """An invalid setting (engine option, size string, environment variable), refused before use."""


class NotACacheError(CacheError):
    """A directory that is not a wasmcache root, so it is never written to, collected or wiped."""


class UnsafeCacheError(CacheError, PermissionError):
    """The cache root or an entry could be rewritten by someone else (world-writable, foreign owner)."""
