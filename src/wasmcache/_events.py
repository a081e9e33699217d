"""The drop-in's event log: what it did in each process, for services nobody watches (issue 14).

Under `wasmcache exec` or $WASMCACHE_AUTO the drop-in says nothing (a guest leaves no trace in the
program's output), so a process it served appends one line to ROOT/events when it exits:

    <unix time> <pid> hits=3 misses=1 compiles=1 ... program=<argv[0]>

Written once per process, at exit, only if the drop-in served something and the root is writable:
the hit path itself writes nothing. One `write()` of one short line to a file opened with O_APPEND,
so lines of processes exiting together do not interleave. Past 1 MiB the file is renamed to
events.1 (the previous events.1 is dropped), so the log is bounded. `wasmcache stats` sums it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Final

from ._core import EVENTS_NAME, EVENTS_OLD_NAME

if TYPE_CHECKING:
    from pathlib import Path

_ROTATE_BYTES: Final = 1 << 20
_FLAGS: Final = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


def append(root: Path, counts: dict[str, int]) -> None:
    """One line for this process (best effort: a full disk or a read-only root loses it silently)."""
    program = os.path.basename(sys.argv[0] if sys.argv and sys.argv[0] else sys.executable) or "?"
    # One token that cannot pass for a counter: no spaces, no '=' (a file named "a hits=9.py" counts nothing).
    program = "".join(c if c.isprintable() and not c.isspace() and c != "=" else "_" for c in program)
    fields = " ".join(f"{name}={value}" for name, value in counts.items())
    line = f"{int(time.time())} {os.getpid()} {fields} program={program}".replace("\n", " ") + "\n"
    path = os.path.join(root, EVENTS_NAME)
    try:
        fd = os.open(path, _FLAGS, 0o644)
    except OSError:
        return
    try:
        os.write(fd, line.encode("utf-8", "backslashreplace"))
        size = os.fstat(fd).st_size
    except OSError:
        return
    finally:
        os.close(fd)
    if size > _ROTATE_BYTES:
        try:
            os.replace(path, os.path.join(root, EVENTS_OLD_NAME))
        except OSError:
            pass


class EventTotals:
    """The sums of the event log (a plain class: this module is imported at every served exit)."""

    __slots__ = ("counts", "processes", "since")

    def __init__(self, processes: int, counts: dict[str, int], since: float | None) -> None:
        self.processes = processes
        self.counts = counts
        self.since = since  # the time of the oldest line read


def read_totals(root: Path) -> EventTotals:
    """The sums over ROOT/events.1 and ROOT/events (a line that does not parse is skipped)."""
    processes = 0
    counts: dict[str, int] = {}
    since: float | None = None
    for name in (EVENTS_OLD_NAME, EVENTS_NAME):
        try:
            with open(os.path.join(root, name), encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split(" ")
            if len(words) < 3 or not words[0].isdigit():
                continue
            values = dict(word.split("=", 1) for word in words[2:] if "=" in word)
            numbers = {k: int(v) for k, v in values.items() if k != "program" and v.isdigit()}
            processes += 1
            since = float(words[0]) if since is None else min(since, float(words[0]))
            for key, value in numbers.items():
                counts[key] = counts.get(key, 0) + value
    return EventTotals(processes, counts, since)
