"""How bytes reach the disk: atomic publication, entry records, per-key locks and quarantine.

The rules (issue #2, storage guarantees 2 and 3):
- a file is written under a temp name created exclusively in the same directory, fsynced, made
  read-only, renamed into place, and the directory is fsynced: no reader sees a partial file;
- an existing entry is never opened for writing or truncated: a bad one is renamed away (into
  quarantine) or unlinked, so a process that has it mapped keeps its inode and keeps running;
- entries, records and temp files are never followed through symlinks (O_NOFOLLOW).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import time
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import blake3

from ._layout import KEY_RE, KINDS, LOCK_SUFFIX, RECORD_SUFFIX, TEMP_SUFFIX

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

O_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
RECORD_VERSION: Final = 1
_MAX_RECORD: Final = 64 << 10
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
    return final.with_name(f"{final.stem}.{os.urandom(6).hex()}{TEMP_SUFFIX}")


def create_exclusive(path: Path, mode: int = 0o600) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_small_file_atomically(path: Path, data: bytes, *, mode: int = 0o600, durable: bool = False) -> None:
    """Replace `path` with `data` by temp file + rename (readers see the old or the new file).

    The writer holds an flock on its temp file until the rename, so gc tells a dead writer's
    leftover (lock free: reap it) from a live one's (held: leave it), whatever its age.
    """
    temp = temp_path_for(path)
    fd = create_exclusive(temp, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        write_all(fd, data)
        if durable:
            os.fsync(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    finally:
        os.close(fd)
    if durable:
        fsync_directory(path.parent)


def reap_if_dead(temp: str | Path) -> bool:
    """Unlink temp file `temp` if no writer holds its flock (see write_small_file_atomically)."""
    try:
        fd = os.open(temp, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
    except OSError:
        return False
    try:
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


def publish_atomically(final: Path, data: bytes | bytearray | memoryview) -> os.stat_result:
    """Publish `data` at `final`: exclusive temp, write, fsync, chmod 0444, rename, fsync dir.

    Returns the stat of the published file taken *after* the rename (rename changes ctime), so
    the identity recorded for it is the one a later reader will see.
    """
    temp = temp_path_for(final)
    fd = create_exclusive(temp, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
        os.fchmod(fd, 0o444)
        written = os.fstat(fd)
        os.rename(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    finally:
        os.close(fd)
    fsync_directory(final.parent)
    published = os.stat(final, follow_symlinks=False)
    if (published.st_dev, published.st_ino) != (written.st_dev, written.st_ino):
        # Someone replaced it between our rename and this stat; record nothing of theirs.
        raise FileExistsError(errno.EEXIST, "entry replaced while publishing", str(final))
    return published


def read_fd(fd: int, size: int) -> bytearray:
    data = bytearray(size)
    view = memoryview(data)
    pos = 0
    while pos < size:
        n = os.readv(fd, [view[pos:]])
        if n == 0:
            raise OSError("file shrank while being read")
        pos += n
    return data


def digest_fd(fd: int) -> tuple[str, int]:
    """blake3 of the whole file behind `fd`, read (never mapped: a truncation must not SIGBUS us)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    buffer = bytearray(_READ_CHUNK)
    view = memoryview(buffer)
    total = 0
    offset = 0
    while True:
        n = os.preadv(fd, [view], offset)
        if n == 0:
            return hasher.hexdigest(), total
        hasher.update(view[:n])
        total += n
        offset += n


# --- records ------------------------------------------------------------------------------------


class Identity(NamedTuple):
    """What a stat says about a file; equal identities mean the very file that was published."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# NamedTuples, not dataclasses: importing dataclasses costs every process that loads a module ~5 ms.
class Record(NamedTuple):
    """What was published under a key; stored next to the entry as `<key>.rec`."""

    key: str
    kind: str
    wasm_digest: str
    content_digest: str
    size: int
    identity: Identity | None  # None until the entry has been renamed into place
    source: str
    wasmtime_version: str
    created: float

    def to_json(self) -> bytes:
        fields: dict[str, Any] = self._asdict()
        fields["identity"] = self.identity._asdict() if self.identity is not None else None
        fields["version"] = RECORD_VERSION
        return json.dumps(fields, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Record:
        """Parse a record; anything malformed raises ValueError (records are files we did not lock)."""
        try:
            fields = json.loads(raw)
        except (UnicodeDecodeError, RecursionError) as exc:
            raise ValueError(f"record is not JSON: {exc}") from None
        if not isinstance(fields, dict) or fields.get("version") != RECORD_VERSION:
            raise ValueError("record has no supported version")

        def text(name: str, pattern: Any = None) -> str:
            value = fields.get(name)
            if not isinstance(value, str) or (pattern is not None and not pattern.match(value)):
                raise ValueError(f"record field {name} is missing or malformed")
            return value

        def number(name: str, value: Any = None) -> int:
            value = fields.get(name) if value is None else value
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"record field {name} is missing or malformed")
            return value

        identity = fields.get("identity")
        if identity is not None:
            if not isinstance(identity, dict) or set(identity) != {"dev", "ino", "size", "mtime_ns", "ctime_ns"}:
                raise ValueError("record field identity is malformed")
            identity = Identity(**{k: number(f"identity.{k}", v) for k, v in identity.items()})
        kind = text("kind")
        if kind not in KINDS:
            raise ValueError("record field kind is malformed")
        created = fields.get("created")
        if not isinstance(created, (int, float)) or isinstance(created, bool):
            raise ValueError("record field created is malformed")  # noqa: TRY004 - bad data, not a caller's type
        return cls(
            key=text("key", KEY_RE),
            kind=kind,
            wasm_digest=text("wasm_digest", KEY_RE),
            content_digest=text("content_digest", KEY_RE),
            size=number("size"),
            identity=identity,
            source=text("source"),
            wasmtime_version=text("wasmtime_version"),
            created=float(created),
        )


def read_record(path: Path) -> tuple[Record, os.stat_result] | None:
    """The record at `path` and its stat (its mtime is the entry's last use), or None if absent/bad."""
    try:
        fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_RECORD:
            return None
        raw = os.read(fd, _MAX_RECORD)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return Record.from_json(raw), st
    except ValueError:
        return None


def write_record(path: Path, record: Record) -> None:
    write_small_file_atomically(path, record.to_json(), mode=0o644, durable=True)


# --- per-key locks ------------------------------------------------------------------------------


class KeyLock:
    """An exclusive, cross-process lock on one key: `<key>.lock` held with flock.

    flock locks belong to an open file description, so two threads of one process exclude each
    other too, and the kernel drops the lock when its holder dies (so a dead writer's temp file is
    told from a live one's by trying this lock, never by age). Lock files may be unlinked by gc or
    clear while held; after locking we check that the path still names our inode and retry if not.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, *, blocking: bool = True, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if not blocking or (deadline is not None and time.monotonic() >= deadline):
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
                continue
            except BaseException:
                os.close(fd)
                raise
            try:
                current = os.stat(self.path, follow_symlinks=False)
                held = os.fstat(fd)
            except FileNotFoundError:
                os.close(fd)
                continue
            if (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                self._fd = fd
                return True
            os.close(fd)  # the file was replaced after we opened it: lock the new one

    def release(self, *, unlink: bool = False) -> None:
        if self._fd is None:
            return
        if unlink:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> KeyLock:  # noqa: PYI034 - final in practice; Self needs 3.11
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """Yield True while holding `path` if it was free, else False (never waits)."""
    lock = KeyLock(path)
    try:
        got = lock.acquire(blocking=False)
    except OSError:
        got = False
    try:
        yield got
    finally:
        lock.release()


def lock_path(namespace_dir: Path, key: str) -> Path:
    return namespace_dir / f"{key}{LOCK_SUFFIX}"


def record_path(namespace_dir: Path, key: str) -> Path:
    return namespace_dir / f"{key}{RECORD_SUFFIX}"


# --- quarantine ---------------------------------------------------------------------------------


def quarantine(root: Path, path: Path, reason: str) -> Path | None:
    """Move `path` (never followed if a symlink) into ROOT/quarantine; unlink if that fails.

    Rename keeps the inode alive for any process that has it mapped. The new name keeps neither
    the .cwasm nor the .tmp suffix, so nothing treats it as an entry again.
    """
    target_dir = root / "quarantine"
    target = target_dir / f"{path.name.replace('.', '-')}.{path.parent.name}.{int(time.time())}.{os.urandom(3).hex()}"
    try:
        target_dir.mkdir(mode=0o700, exist_ok=True)
        os.rename(path, target)
        with contextlib.suppress(OSError):
            (target_dir / (target.name + ".why")).write_text(reason + "\n", encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None
    return target
