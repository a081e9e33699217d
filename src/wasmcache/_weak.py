"""A dictionary keyed weakly by objects (engines), on the C-level `_weakref` and `_thread` alone.

Not generic: a `typing.Generic` class costs ~0.2 ms to build at import.

`weakref.WeakKeyDictionary` and `threading.Lock` cost ~1.4 ms of imports (weakref, _weakrefset,
threading) in every process that loads a module, where wasmtime imports neither: measured with
`-X importtime` on a hit, 65 ms in all. This is the little of them the per-process memos need.
"""

from __future__ import annotations

from _thread import allocate_lock
from _weakref import ref
from typing import Any


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
