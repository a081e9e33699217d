"""wasmcache: a crash-safe cache of precompiled WebAssembly modules for Wasmtime.

    import wasmcache
    cache = wasmcache.ModuleCache()
    module = cache.load("app.wasm")      # a wasmtime.Module, mapped from a checked, read-only entry

`import wasmcache` imports neither wasmtime (until the first load) nor the CLI's dependencies.
"""

from __future__ import annotations

from ._cache import CacheStats, ModuleCache
from ._engine import EngineSettings
from ._errors import CacheError, CompileError, ConfigError, NotACacheError, SourceError, UnsafeCacheError
from ._fingerprint import engine_fingerprint
from ._root import parse_size
from ._version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._maintenance import EntryInfo, GcReport
    from ._verify import Finding, VerifyReport

_LAZY = {"EntryInfo": "_maintenance", "GcReport": "_maintenance", "Finding": "_verify", "VerifyReport": "_verify"}


def __getattr__(name: str) -> object:
    # The maintenance types (gc, verify, ls) load on first use: a process that only loads modules
    # never pays for them.
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'wasmcache' has no attribute {name!r}")

__all__ = [
    "CacheError",
    "CacheStats",
    "CompileError",
    "ConfigError",
    "EngineSettings",
    "EntryInfo",
    "Finding",
    "GcReport",
    "ModuleCache",
    "NotACacheError",
    "SourceError",
    "UnsafeCacheError",
    "VerifyReport",
    "__version__",
    "engine_fingerprint",
    "parse_size",
]
