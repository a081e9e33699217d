"""How bytes reach the disk and come back: the one temp-file-then-rename writer and the readers.

The rules (storage guarantees 2 and 3 of the README):
- a file is written under a temp name created exclusively in the same directory, fsynced (when it
  must survive power loss), renamed into place, and the directory is fsynced: no reader ever sees
  a partial file;
- an existing file is never opened for writing or truncated: it is replaced by rename, so a
  process that has the old one mapped keeps its inode and keeps running;
- nothing is followed through symlinks (O_NOFOLLOW);
- the writer holds an flock on its temp file until the rename, so a collector tells a dead
  writer's leftover (lock free: reap it) from a live one's (held: leave it), whatever its age.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import TYPE_CHECKING, Final

import blake3

from ._layout import TEMP_SUFFIX

if TYPE_CHECKING:
    from pathlib import Path

O_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
READ_FLAGS: Final = os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC
_READ_CHUNK: Final = 8 << 20


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX; Windows has no directory fsync)."""
    try:
        fd = os.open(directory, os.O_RDONLY | O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path_for(final: Path) -> Path:
    return final.with_name(f"{final.name.split('.', 1)[0]}.{os.urandom(6).hex()}{TEMP_SUFFIX}")


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def locked_temp(final: Path, mode: int = 0o600) -> tuple[Path, int]:
    """A new temp file next to `final`, created exclusively and flocked by us: (its path, its fd).

    Between the create and the flock a collector could find the file unlocked and reap it; so
    after locking, the path must still name our inode, or we start again with another name.
    """
    while True:
        temp = temp_path_for(final)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        try:
            import fcntl  # noqa: PLC0415 - not on a hit's path

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = os.fstat(fd)
            current = os.stat(temp, follow_symlinks=False)
        except FileNotFoundError:
            os.close(fd)
            continue  # reaped in that instant
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
            return temp, fd
        os.close(fd)


def discard_temp(temp: Path, fd: int) -> None:
    """Give up a `locked_temp`: unlink it, then close it (dropping its flock)."""
    with contextlib.suppress(OSError):
        os.unlink(temp)
    os.close(fd)


def commit_temp(temp: Path, fd: int, final: Path, *, durable: bool = False, read_only: bool = False) -> os.stat_result:
    """Rename a written `locked_temp` over `final` (closing `fd`); readers see the old or the new file.

    `durable`: fsync the file before the rename and the directory after it. `read_only`: the file
    is made 0444 before it becomes visible (entries are never written again), and the stat of
    `final` taken *after* the rename (rename changes ctime) is checked to be our inode and
    returned, so the identity recorded for an entry is the one a later reader sees. (Small files
    may be replaced by a concurrent writer of the same content: that is fine for them.)
    """
    try:
        if durable:
            os.fsync(fd)
        if read_only:
            os.fchmod(fd, 0o444)
        written = os.fstat(fd)
        os.rename(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    finally:
        os.close(fd)
    if durable:
        fsync_directory(final.parent)
    published = os.stat(final, follow_symlinks=False)
    if read_only and (published.st_dev, published.st_ino) != (written.st_dev, written.st_ino):
        # Someone replaced it between our rename and this stat; record nothing of theirs.
        raise FileExistsError(errno.EEXIST, "replaced by another writer while publishing", str(final))
    return published


def write_atomically(
    final: Path, data: bytes | bytearray | memoryview, *, mode: int = 0o600, durable: bool = False,
    read_only: bool = False,
) -> os.stat_result:
    """Replace `final` with `data` by exclusive temp file + rename (see `commit_temp`)."""
    temp, fd = locked_temp(final, mode)
    try:
        write_all(fd, data)
    except BaseException:
        discard_temp(temp, fd)
        raise
    return commit_temp(temp, fd, final, durable=durable, read_only=read_only)


def read_small_file(path: Path | str, limit: int = 1 << 16) -> bytes | None:
    """Up to `limit` bytes of a small file in one read (never through a symlink), or None.

    os-level on purpose: markers, memos and records are read on every hit, in every process.
    """
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def reap_if_dead(temp: str | Path) -> bool:
    """Unlink temp file `temp` if no writer holds its flock (see `write_atomically`)."""
    try:
        fd = os.open(temp, READ_FLAGS)
    except OSError:
        return False
    try:
        import fcntl  # noqa: PLC0415 - not on a hit's path

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held = os.fstat(fd)
        current = os.stat(temp, follow_symlinks=False)
        if (held.st_dev, held.st_ino) != (current.st_dev, current.st_ino):
            return False
        os.unlink(temp)
    except OSError:  # BlockingIOError: a live writer holds it
        return False
    finally:
        os.close(fd)
    return True


def read_fd(fd: int, size: int) -> bytearray:
    """Exactly `size` bytes from the start of `fd` (read, never mapped: a truncation must not SIGBUS us)."""
    data = bytearray(size)
    view = memoryview(data)
    pos = 0
    while pos < size:
        n = os.preadv(fd, [view[pos:]], pos)
        if n == 0:
            raise OSError(errno.EIO, "file shrank while being read")
        pos += n
    return data


def digest_fd(fd: int) -> tuple[str, int]:
    """blake3 of the whole file behind `fd` and its length, read in chunks (never mapped)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    buffer = bytearray(_READ_CHUNK)
    view = memoryview(buffer)
    total = 0
    while True:
        n = os.preadv(fd, [view], total)
        if n == 0:
            return hasher.hexdigest(), total
        hasher.update(view[:n])
        total += n
