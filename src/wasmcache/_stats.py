"""What a `ModuleCache` counts: its live counters and the `CacheStats` snapshot it hands out."""

from __future__ import annotations

import threading
from typing import Final, NamedTuple


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


class Counters:
    """The counters of one ModuleCache, safe to bump from any thread."""

    NAMES: Final = ("hits", "misses", "compiles", "remote_hits", "remote_misses", "uploads", "rejected")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
