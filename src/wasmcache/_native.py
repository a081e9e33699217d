"""The wasmtime calls wasmcache makes: compile, deserialize and map, always wasmtime's own.

The drop-in (`wasmcache.install()`) replaces `wasmtime.Module.__init__`, `from_file` and
`deserialize_file` (and Component's). wasmcache's own compiles and loads must still reach
wasmtime, so the originals are captured here, once per kind, before anything patches them, and
every call the core makes goes through this module.
"""

from __future__ import annotations

from _thread import allocate_lock
from typing import TYPE_CHECKING, Any

from ._errors import CacheError

if TYPE_CHECKING:
    from ._layout import Kind



class EntryRefusedError(CacheError):
    """wasmtime refused to deserialize a checked artifact (the message is its reason)."""

    def __init__(self, reason: str, wasmtime_error: BaseException | None = None) -> None:
        super().__init__(reason)
        self.wasmtime_error = wasmtime_error


_originals: dict[str, dict[str, Any]] = {}
_guard = allocate_lock()


def compiled_class(kind: Kind) -> Any:
    """wasmtime.Module, or Component (whose import costs ~10 ms: only when a component is loaded)."""
    if kind == "module":
        import wasmtime  # noqa: PLC0415

        return wasmtime.Module
    from wasmtime.component import Component  # noqa: PLC0415

    return Component


def originals(kind: Kind) -> dict[str, Any]:
    """wasmtime's own `__init__`, `from_file`, `deserialize` and `deserialize_file` of `kind`'s class.

    Captured on first use; the drop-in calls this before it patches anything.
    """
    found = _originals.get(kind)
    if found is None:
        with _guard:
            found = _originals.get(kind)
            if found is None:
                cls = compiled_class(kind)
                found = {
                    "class": cls,
                    "__init__": cls.__dict__["__init__"],
                    "from_file": cls.__dict__["from_file"],
                    "deserialize": cls.__dict__["deserialize"],
                    "deserialize_file": cls.__dict__["deserialize_file"],
                }
                _originals[kind] = found
    return found


def compile_wasm(kind: Kind, engine: Any, data: bytes | str) -> Any:
    """`Module(engine, data)` as wasmtime does it (WAT text accepted); raises wasmtime.WasmtimeError."""
    found = originals(kind)
    cls = found["class"]
    compiled = cls.__new__(cls)
    found["__init__"](compiled, engine, data)
    return compiled


def deserialize(kind: Kind, engine: Any, data: bytes | bytearray) -> Any:
    """`Module.deserialize(engine, data)`: a copy in memory, no mapping held."""
    found = originals(kind)
    return found["deserialize"].__get__(None, found["class"])(engine, data)


def deserialize_file(kind: Kind, engine: Any, path: str) -> Any:
    """`Module.deserialize_file(engine, path)`: wasmtime maps `path`."""
    found = originals(kind)
    return found["deserialize_file"].__get__(None, found["class"])(engine, path)
