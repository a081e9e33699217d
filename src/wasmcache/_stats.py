"""What a cache reports: the `CacheStats` snapshot it hands out, and the root's usage record.

Not on the hit path (a process that only loads imports neither): the live counters are `_core.Counters`."""

# No `from __future__ import annotations`: typing.NamedTuple makes each string annotation a ForwardRef
# and compiles it (~0.15 ms a class in every process that loads a module: issue 14, item 7).
import os
import time
from typing import TYPE_CHECKING, NamedTuple

from ._core import USAGE_NAME, read_small_file, write_atomically

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path


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


class Usage(NamedTuple):
    """The whole root's entry count and bytes (entries, records, memos, quarantine), and the record's age."""

    entries: int
    size_bytes: int
    age: float


def read_usage(root: "Path") -> Usage | None:
    """The usage record kept in ROOT/usage ("<entries> <bytes>"), or None if absent or unreadable."""
    try:
        st = os.stat(root / USAGE_NAME)
    except OSError:
        return None
    raw = read_small_file(root / USAGE_NAME, 128)
    parts = raw.split() if raw else []
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    return Usage(int(parts[0]), int(parts[1]), time.time() - st.st_mtime)


def write_usage(root: "Path", entries: int, size_bytes: int) -> None:
    write_atomically(root / USAGE_NAME, f"{max(entries, 0)} {max(size_bytes, 0)}\n".encode())
