"""The modules this process has loaded, per engine: the same key loaded again with the same Engine
returns the same module, while its entry is still the file it maps (one stat)."""

# No `from __future__ import annotations`: typing.NamedTuple makes each string annotation a ForwardRef
# and compiles it (~0.15 ms a class in every process that loads a module: issue 14, item 7).
import contextlib
import os
from _thread import allocate_lock
from typing import TYPE_CHECKING, Any, NamedTuple

from ._record import Identity
from ._weak import WeakKeyMap

if TYPE_CHECKING:
    from pathlib import Path


# Modules already loaded in this process, per engine object, then (root, mode, kind, key): the
# same key loaded twice through the same root and mode with the same Engine returns the same
# module (a Module only works with its own Engine). Another root still gets its entry; "memory"
# never returns a mapped module. Weak on the engine (never keeps one alive), strong on the
# modules: they live as long as their engine, and are served again only while their entry is the
# file they map (an in-place rewrite, which no writer of ours does, is loaded afresh). A weak
# module here was handed out while wasmtime's __del__ was freeing its native handle in another
# thread (the GIL is released in that C call, and the weak reference is cleared only after
# __del__): a use-after-free that the drop-in's threads hit.
class Loaded(NamedTuple):
    """A module of the per-process memo, and the identity of the entry it maps (None: a copy)."""

    module: Any
    entry: str
    identity: Identity | None

    @classmethod
    def of(cls, module: Any, entry: "Path", mode: str, mapped: Identity | None) -> "Loaded":
        """`mapped`: the identity of the entry the hit mapped; None after a miss (one stat here)."""
        identity = mapped if mode == "mmap" else None
        if mode == "mmap" and identity is None:
            with contextlib.suppress(OSError):
                identity = Identity.of(os.stat(entry, follow_symlinks=False))
        return cls(module, str(entry), identity)

    def still_valid(self) -> bool:
        """The entry it maps is still the file it was (one stat): a rewrite in place is not served again."""
        if self.identity is None:
            return True
        try:
            return Identity.of(os.stat(self.entry, follow_symlinks=False)) == self.identity
        except OSError:
            return True  # collected or cleared: the mapping holds its inode, intact


loaded_by_engine = WeakKeyMap()  # wasmtime.Engine -> {(root, mode, kind, key): _Loaded}
loaded_guard = allocate_lock()


def mapped_entry(engine: Any, module: Any) -> tuple[str, Identity] | None:
    """(entry path, identity) of the entry `module` maps, as this process loaded it; None for a copy."""
    loaded = loaded_by_engine.get(engine)
    if not loaded:
        return None
    with loaded_guard:
        found = next((each for each in loaded.values() if each.module is module), None)
    return (found.entry, found.identity) if found is not None and found.identity is not None else None
