"""wasmcache: a crash-safe cache of precompiled WebAssembly modules for Wasmtime.

    import wasmcache
    cache = wasmcache.ModuleCache()
    module = cache.load("app.wasm")      # a wasmtime.Module, mapped from a checked, read-only entry

`import wasmcache` imports neither wasmtime (until the first load) nor the CLI's dependencies.
"""

from __future__ import annotations

from ._cache import CacheStats, ModuleCache, SourceError
from ._engine import EngineSettings, engine_fingerprint
from ._errors import CacheError, CompileError, ConfigError, NotACacheError, UnsafeCacheError
from ._layout import parse_size
from ._maintenance import EntryInfo, Finding, GcReport, VerifyReport
from ._version import __version__

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
