"""wasmcache: a crash-safe cache of precompiled WebAssembly modules for Wasmtime.

    import wasmcache
    cache = wasmcache.ModuleCache()
    module = cache.load("app.wasm")      # a wasmtime.Module, mapped from a checked, read-only entry

`import wasmcache` imports only the exceptions: every other name loads on first use (PEP 562),
so `wasmcache exec` and the startup hook pay nothing for what they do not use, and neither
wasmtime (until the first load) nor the CLI's dependencies are ever imported by it.
"""

from __future__ import annotations

from ._errors import CacheError, CompileError, ConfigError, NotACacheError, SourceError, UnsafeCacheError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os

    from ._cache import ModuleCache
    from ._core import Mode, engine_fingerprint, parse_size
    from ._dropin import DropIn
    from ._engine import EngineSettings
    from ._maintenance import EntryInfo, GcReport
    from ._stats import CacheStats
    from ._verify import Finding, VerifyReport
    from ._version import __version__

# name -> the private module that defines it
_LAZY = {"CacheStats": "_stats", "ModuleCache": "_cache", "EngineSettings": "_engine",
         "engine_fingerprint": "_core", "parse_size": "_core", "EntryInfo": "_maintenance",
         "GcReport": "_maintenance", "Finding": "_verify", "VerifyReport": "_verify", "DropIn": "_dropin",
         "__version__": "_version"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wasmcache' has no attribute {name!r}")
    # __import__, not importlib.import_module: `import importlib` (its package, not the bootstrap every
    # process has) costs a library hit process ~0.2 ms for nothing (issue 14, item 7).
    __import__(f"{__name__}.{module}")
    value = getattr(globals()[module], name)  # the import binds the submodule on this package
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


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
