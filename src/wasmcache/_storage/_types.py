"""The things storage hands out: a checked entry, a writer's temp file, a scan's view of a key, the
reason an entry is not trusted; and the one way a bad file is set aside (`quarantine`)."""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING

from .._errors import CacheError
from .._fs import discard_temp, write_atomically
from .._layout import QUARANTINE_DIR, WHY_SUFFIX

if TYPE_CHECKING:
    from pathlib import Path

    from .._record import Identity, Record


class UntrustedEntryError(CacheError):
    """An entry that must not be loaded: `problem` is corrupt | mismatched | orphan; `seen` the identity judged."""

    def __init__(self, problem: str, detail: str, seen: Identity | None = None) -> None:
        super().__init__(f"{problem}: {detail}")
        self.problem = problem
        self.detail = detail
        self.seen = seen


# Plain slotted classes, not NamedTuples: each NamedTuple class costs every process that loads a
# module ~0.1 ms to build at import (measured with -X importtime).
class CheckedEntry:
    """An open, checked entry: map `fd` (the checked inode), then `close()`.

    `content_checked`: the content was hashed (identity differed, or a full check was asked for);
    `data`: the content, when asked for (push, verify).
    """

    __slots__ = ("content_checked", "data", "fd", "record", "record_stat", "stat")

    def __init__(self, fd: int, stat: os.stat_result, record: Record, record_stat: os.stat_result, *,
                 content_checked: bool, data: bytearray | None) -> None:
        self.fd = fd
        self.stat = stat
        self.record = record
        self.record_stat = record_stat
        self.content_checked = content_checked
        self.data = data

    def close(self) -> None:
        os.close(self.fd)


class TempFile:
    """A writer's temp file in a namespace: its path and the open fd that holds its flock."""

    __slots__ = ("fd", "path")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    def discard(self) -> None:
        discard_temp(self.path, self.fd)


class KeyFiles:
    """The files one key has in a namespace, as one scan saw them."""

    __slots__ = ("entry", "key", "record", "temps")

    def __init__(self, key: str, entry: os.DirEntry[str] | None, record: os.DirEntry[str] | None,
                 temps: tuple[os.DirEntry[str], ...]) -> None:
        self.key = key
        self.entry = entry
        self.record = record
        self.temps = temps

    @property
    def published(self) -> bool:
        """An entry and its record, no writer's temp file: what loads, gc and `ls` count."""
        return self.entry is not None and self.record is not None and not self.temps

    @property
    def interrupted(self) -> bool:
        """A record without its entry: a writer killed between its record and its rename."""
        return self.record is not None and self.entry is None


class Scan:
    """A namespace's files: per key; temp files of no key (its `engine` file's writer); not ours."""

    __slots__ = ("foreign", "keys", "other_temps")

    def __init__(self, keys: list[KeyFiles], other_temps: list[os.DirEntry[str]],
                 foreign: list[os.DirEntry[str]]) -> None:
        self.keys = keys
        self.other_temps = other_temps
        self.foreign = foreign


def quarantine(root: Path, path: Path, reason: str) -> Path | None:
    """Move `path` (never followed if a symlink) into ROOT/quarantine; unlink it if that fails.

    Rename keeps the inode alive for any process that has it mapped. The new name keeps neither
    the .cwasm nor the .tmp suffix, so nothing treats it as an entry again.
    """
    target_dir = root / QUARANTINE_DIR
    target = target_dir / f"{path.name.replace('.', '-')}.{path.parent.name}.{int(time.time())}.{os.urandom(3).hex()}"
    try:
        target_dir.mkdir(mode=0o700, exist_ok=True)
        os.rename(path, target)
        with contextlib.suppress(OSError):
            write_atomically(target_dir / (target.name + WHY_SUFFIX), (reason + "\n").encode("utf-8", "replace"))
    except FileNotFoundError:
        return None
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None
    return target
