"""What a `ModuleCache` counts: its live counters and the `CacheStats` snapshot it hands out."""

# No `from __future__ import annotations`: typing.NamedTuple makes each string annotation a ForwardRef
# and compiles it (~0.15 ms a class in every process that loads a module: issue 14, item 7).
from _thread import allocate_lock
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Mapping


class CacheStats(NamedTuple):
    """Counters of this `ModuleCache` object, plus what the whole root holds on disk (from its usage
    record: exact after a gc or verify, approximate between)."""

    hits: int
    misses: int
    compiles: int
    entries: int
    size_bytes: int
    remote_hits: int = 0
    remote_misses: int = 0
    uploads: int = 0
    rejected: int = 0  # remote artifacts refused (bad or untrusted signature, wrong digest or engine)
    substituted: int = 0  # entries a substituter's signed, precompiled artifact filled (no compile here)

    @classmethod
    def of(cls, counts: "Mapping[str, int]", entries: int, size_bytes: int) -> "CacheStats":
        """From `Counters` values (by name) and the root's usage."""
        return cls(counts["hits"], counts["misses"], counts["compiles"], entries, size_bytes, counts["remote_hits"],
                   counts["remote_misses"], counts["uploads"], counts["rejected"], counts["substituted"])


class Counters:
    """The counters of one ModuleCache, safe to bump from any thread."""

    NAMES: Final = ("hits", "misses", "compiles", "remote_hits", "remote_misses", "uploads", "rejected", "substituted")

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._values = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
