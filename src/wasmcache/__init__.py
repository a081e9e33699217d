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
    import os

    from ._dropin import DropIn, Mode
    from ._maintenance import EntryInfo, GcReport
    from ._verify import Finding, VerifyReport

_LAZY = {"EntryInfo": "_maintenance", "GcReport": "_maintenance", "Finding": "_verify", "VerifyReport": "_verify",
         "DropIn": "_dropin"}


def __getattr__(name: str) -> object:
    # The maintenance types (gc, verify, ls) load on first use: a process that only loads modules
    # never pays for them.
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'wasmcache' has no attribute {name!r}")


def install(root: str | os.PathLike[str] | None = None, *, mode: Mode = "mmap", max_size: int | str | None = None,
            strict: bool = True) -> DropIn:
    """Serve wasmtime's own `Module`/`Component` constructors from the cache, for code you did not change.

    While installed, `wasmtime.Module(engine, wasm)`, `Module.from_file`, `Component(...)` and
    `Component.from_file` hit the cache of that engine, and `deserialize_file` of a program's own
    cache file maps a verified snapshot instead of the file. Returns a handle with `stats()` and
    `uninstall()`; the same arguments again return the same handle, others raise `ConfigError`.
    """
    from ._dropin import install as _install  # noqa: PLC0415 - wasmtime is imported only now

    return _install(root, mode=mode, max_size=max_size, strict=strict)


def uninstall() -> DropIn | None:
    """Put wasmtime's original functions back; returns the handle of the drop-in that was active."""
    from ._dropin import uninstall as _uninstall  # noqa: PLC0415

    return _uninstall()


__all__ = [
    "CacheError",
    "CacheStats",
    "CompileError",
    "ConfigError",
    "DropIn",
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
    "install",
    "parse_size",
    "uninstall",
]
