"""The modules this process has loaded, per engine: the same key loaded again with the same Engine
returns the same module, while its entry is still the file it maps (one stat).

Also `WeakKeyMap`, the per-engine map this memo and the fingerprints' are kept in: a dictionary keyed
weakly by objects, on the C-level `_weakref` and `_thread` alone. `weakref.WeakKeyDictionary` and
`threading.Lock` cost ~1.4 ms of imports (weakref, _weakrefset, threading) in every process that loads
a module, where wasmtime imports neither; not generic, as a `typing.Generic` class costs ~0.2 ms to
build at import (issue 14, item 7).
"""

from __future__ import annotations

import contextlib
import os
from _thread import allocate_lock
from _weakref import ref
from typing import TYPE_CHECKING, Any

from ._record import Identity

if TYPE_CHECKING:
    from pathlib import Path


def held_weakly(function: Any) -> Any:
    """`function` for what the process keeps for its whole life (os.register_at_fork, the hook's pending
    callbacks): see _wasmcache_hook.held_weakly. The hook of an older installation (`exec` from it, this
    Python's own wasmcache newer) has none: such a registration is then strong, as it was, which costs only
    time at the program's exit. The hook is imported here, not above: a library hit never needs it."""
    import _wasmcache_hook  # noqa: PLC0415

    weakly = getattr(_wasmcache_hook, "held_weakly", None)
    return function if weakly is None else weakly(function)


class WeakKeyMap:
    """`key -> value` while `key` lives: an entry goes when its key is collected (never keeps it alive)."""

    __slots__ = ("_entries", "_lock")

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Any, Any]] = {}
        self._lock = allocate_lock()

    def get(self, key: Any) -> Any:
        found = self._entries.get(id(key))
        if found is None or found[0]() is not key:
            return None
        return found[1]

    def setdefault(self, key: Any, value: Any) -> Any:
        """The value for `key`, storing `value` first if it has none."""
        with self._lock:
            found = self.get(key)
            if found is not None:
                return found
            ident = id(key)

            def forget(_: object, ident: int = ident, entries: dict[int, tuple[Any, Any]] = self._entries) -> None:
                entries.pop(ident, None)  # the key is being collected: its id may be reused after this

            self._entries[ident] = (ref(key, forget), value)
            return value

    def put(self, key: Any, value: Any) -> None:
        """Store `value` for `key`, replacing any."""
        with self._lock:
            self._entries.pop(id(key), None)
        self.setdefault(key, value)

    def alive(self) -> list[Any]:
        """The keys still alive (a snapshot)."""
        with self._lock:
            found = list(self._entries.values())
        return [key for key in (reference() for reference, _value in found) if key is not None]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# Modules already loaded in this process, per engine object, then (root, mode, kind, key): the
# same key loaded twice through the same root and mode with the same Engine returns the same
# module (a Module only works with its own Engine). Another root still gets its entry; "memory"
# never returns a mapped module. Weak on the engine (never keeps one alive), strong on the
# modules: they live as long as their engine, and are served again only while their entry is the
# file they map (an in-place rewrite, which no writer of ours does, is loaded afresh). A weak
# module here was handed out while wasmtime's __del__ was freeing its native handle in another
# thread (the GIL is released in that C call, and the weak reference is cleared only after
# __del__): a use-after-free that the drop-in's threads hit.
class Loaded:
    """A module of the per-process memo, and the identity of the entry it maps (None: a copy)."""

    __slots__ = ("entry", "identity", "module")

    def __init__(self, module: Any, entry: str, identity: Identity | None) -> None:
        self.module = module
        self.entry = entry
        self.identity = identity

    @classmethod
    def of(cls, module: Any, entry: Path, mode: str, mapped: Identity | None) -> Loaded:
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

# How many modules the memo keeps alive, over all engines: the least recently used beyond that is let
# go (the program's own references keep it alive; a later load maps it again). Each module mapped from
# a file holds a descriptor: an unbounded memo ran a service that loads many modules, or one that keeps
# many engines, out of descriptors where the same program unwrapped frees each module it drops.
MEMO_LIMIT = 64
_recent: dict[tuple[int, tuple[str, str, str, str]], Any] = {}  # (id(engine), key) -> ref(engine), oldest first


def forget_all() -> None:
    """Empty the memo of every engine (under `loaded_guard`)."""
    loaded_by_engine.clear()
    _recent.clear()


def remember(engine: Any, loaded: dict[tuple[str, str, str, str], Loaded], key: tuple[str, str, str, str],
             found: Loaded | None = None) -> list[Loaded]:
    """Note `key` of `engine`'s memo as used now (storing `found` under it, if given); returns what the
    memo let go, to be dropped by the caller after it releases `loaded_guard` (a module's release runs
    wasmtime's destructor). Called under `loaded_guard`."""
    if found is not None:
        loaded[key] = found
    order = (id(engine), key)
    _recent.pop(order, None)
    _recent[order] = ref(engine)
    released: list[Loaded] = []
    while len(_recent) > MEMO_LIMIT:
        oldest = next(iter(_recent))
        holder = _recent.pop(oldest)()
        memo = loaded_by_engine.get(holder) if holder is not None else None
        gone = memo.pop(oldest[1], None) if memo is not None else None
        if gone is not None:
            released.append(gone)
    return released


# The drop-in keeps no module alive (its caches have no memo: the program's own objects decide how long a
# module lives, as unwrapped): what each module it loaded maps, while that module lives.
served_entries = WeakKeyMap()  # wasmtime.Module -> (entry path, identity): never the module itself


def mapped_entry(engine: Any, module: Any) -> tuple[str, Identity] | None:
    """(entry path, identity) of the entry `module` maps, as this process loaded it; None for a copy."""
    served = served_entries.get(module)
    if served is not None:
        found_entry: tuple[str, Identity] = served
        return found_entry
    loaded = loaded_by_engine.get(engine)
    if not loaded:
        return None
    with loaded_guard:
        found = next((each for each in loaded.values() if each.module is module), None)
    return (found.entry, found.identity) if found is not None and found.identity is not None else None
