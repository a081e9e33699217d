"""Storage: the files of one namespace and every operation on them (diskcache's `Disk`).

The cache, the miss path and the maintenance commands decide *when* to load, publish, repair,
evict or clear; this module alone knows *which files* a key has and *how* each of those is done:

- `Namespace.check`: the one check of an entry, used by loads, `verify` and `push`. An entry is
  trusted when the fd we opened (never through a symlink) is a regular file whose identity equals
  the one recorded after its publication; otherwise (a copied or restored root, tampering) only a
  full check will do: its content's blake3 must equal the record's and its `.wasmtime.engine`
  section the namespace's (a substituted entry's: the namespace's but for ISA flags the host has).
- `Namespace.publish`: record (without identity), entry by exclusive temp file + fsync + rename +
  directory fsync, record with the identity stat'ed after the rename. Nothing is written in place.
  Identical content is stored once, whichever came first: the new key becomes a second name of the
  identical entry's inode, linked only once the caller accepted (mapped) that entry.
- `Namespace.quarantine_if_unchanged` / `evict` / `clear_key`: under the key's lock, and a bad
  entry only if the path still names the very file that was judged.
- `Namespace.scan`: the one classification of a namespace's files into keys (entry, record,
  temp files), temp files of no key, and files wasmcache did not write.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

import blake3

from ._errors import CacheError
from ._fs import (
    READ_FLAGS,
    commit_temp,
    digest_fd,
    discard_temp,
    fsync_directory,
    locked_temp,
    read_fd,
    read_small_file,
    write_atomically,
)
from ._layout import (
    ENTRY_SUFFIX,
    LOCK_SUFFIX,
    NAMESPACE_ENGINE_FILE,
    QUARANTINE_DIR,
    RECORD_SUFFIX,
    WHY_SUFFIX,
    is_keyed_name,
    is_namespace_name,
    is_temp_name,
    key_of,
    namespace_name,
)
from ._record import Identity, Record, read_record, write_record

__all__ = ["CheckedEntry", "KeyFiles", "Namespace", "Scan", "TempFile", "UntrustedEntryError", "iter_entries",
           "namespaces", "quarantine"]

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ._lock import KeyLock


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


class Namespace:
    """One `ns-<fingerprint>` directory of a root: every entry in it was compiled by one engine configuration."""

    __slots__ = ("name", "path", "root")

    def __init__(self, root: Path, path: Path) -> None:
        self.root = root
        self.path = path
        self.name = path.name

    @classmethod
    def of(cls, root: Path, fingerprint: str) -> Namespace:
        return cls(root, root / namespace_name(fingerprint))

    def __repr__(self) -> str:
        return f"Namespace({str(self.path)!r})"

    # --- names ----------------------------------------------------------------------------------

    def entry_path(self, key: str) -> Path:
        return self.path / f"{key}{ENTRY_SUFFIX}"

    def record_path(self, key: str) -> Path:
        return self.path / f"{key}{RECORD_SUFFIX}"

    def lock(self, key: str) -> KeyLock:
        from ._lock import KeyLock  # noqa: PLC0415 - a miss's (a hit takes no lock)

        return KeyLock(self.path / f"{key}{LOCK_SUFFIX}")

    def key_free(self, key: str) -> contextlib.AbstractContextManager[bool]:
        """Hold the key's lock while the block runs if nobody holds it (True), else False; never waits."""
        from ._lock import try_lock  # noqa: PLC0415 - a miss's (a hit takes no lock)

        return try_lock(self.path / f"{key}{LOCK_SUFFIX}")

    def read_section(self) -> bytes | None:
        """The engine section every entry here must carry (the namespace's `engine` file)."""
        return read_small_file(self.path / NAMESPACE_ENGINE_FILE, 1 << 20)

    def ensure(self, section: bytes | None) -> None:
        """The directory, and its engine file once the section is known."""
        self.path.mkdir(mode=0o700, exist_ok=True)
        engine_file = self.path / NAMESPACE_ENGINE_FILE
        if section is not None and not engine_file.exists():
            write_atomically(engine_file, section, mode=0o444, durable=True)

    # --- an entry -------------------------------------------------------------------------------

    def check(self, key: str, *, kind: str | None, section: bytes | None, full: bool = False,
              keep_data: bool = False) -> CheckedEntry | None:
        """The checked entry for `key`; None if nothing is published under it (no record, or no entry).

        Raises UntrustedEntryError for an entry that must not be loaded. `section`: the engine
        section it must carry (None: not checked).
        """
        found = read_record(self.record_path(key))
        if found is None:
            return None
        record, record_stat = found
        if record.key != key or (kind is not None and record.kind != kind):
            raise UntrustedEntryError("mismatched", f"record does not belong to this key ({kind or record.kind})")
        try:
            fd = os.open(self.entry_path(key), READ_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:  # ELOOP: a symlink where an entry should be; EACCES ...
            raise UntrustedEntryError("corrupt", f"cannot open the entry safely: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            seen = Identity.of(st)
            if not stat.S_ISREG(st.st_mode):
                raise UntrustedEntryError("corrupt", "entry is not a regular file", seen)
            check = full or keep_data or record.identity != seen
            data = None
            if check:
                try:
                    if keep_data:
                        data = read_fd(fd, st.st_size)
                        digest, size = blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest(), len(data)
                    else:
                        digest, size = digest_fd(fd)
                    from ._elf import ENGINE_SECTION, find_section  # noqa: PLC0415 - a full check only

                    entry_section = find_section(data if data is not None else fd, ENGINE_SECTION)
                except (OSError, ValueError) as exc:
                    raise UntrustedEntryError("corrupt", f"entry unreadable or not a Wasmtime file: {exc}",
                                              seen) from None
                if size != record.size or digest != record.content_digest:
                    raise UntrustedEntryError("corrupt", f"entry content does not match its record ({size} bytes, "
                                              f"recorded {record.size}): rewritten or swapped", seen)
                if section is not None and entry_section != section and not _substitutes_for(record, entry_section,
                                                                                              section):
                    raise UntrustedEntryError("mismatched", "entry was compiled by another engine configuration",
                                              seen)
        except BaseException:
            os.close(fd)
            raise
        return CheckedEntry(fd, st, record, record_stat, content_checked=check, data=data)

    def rerecord(self, key: str, checked: CheckedEntry) -> None:
        """The entry's content checked out under a new identity (copied root, restore): record that identity."""
        with contextlib.suppress(OSError):
            write_record(self.record_path(key), checked.record._replace(identity=Identity.of(checked.stat)))

    def touch(self, key: str) -> None:
        """Mark the key used now: the LRU clock lives on the record, never on the entry."""
        with contextlib.suppress(OSError):
            os.utime(self.record_path(key))

    def publish(self, key: str, content: bytes | bytearray | TempFile, record: Record, section: bytes | None, *,
                share: bool | tuple[Namespace, str] = False,
                accept: Callable[[CheckedEntry], object] | None = None) -> tuple[Identity, bool]:
        """Publish `blob` as the entry of `key` (the caller holds the key's lock): (identity recorded,
        whether it shares the inode of an identical entry).

        Any leftover at the key (an orphan, or a bad file a reader could not repair) is set aside
        first. The record goes first, without identity: a crash after the rename (or link) leaves an
        entry the next loader verifies by content instead of recompiling.

        Identical content is stored once (entries are immutable, so sharing an inode is safe): when
        an entry with exactly this content is published already, the new key becomes a second name
        of its inode instead of a second copy. `share`: where to look for it, True for any entry of
        the root (a scan: a snapshot, whose twin could be any key), or the one (namespace, key) it
        could be (a compile's twin is the snapshot of its very bytes, whose key follows from them).
        `accept(checked)`: called with that twin's checked entry before anything changes its inode
        (a link changes its ctime, which its record's identity holds); raising refuses it (say, an
        artifact this engine may not load): the exception goes up and nothing is published.
        `content`: the bytes, or a `TempFile` of this namespace already written (see `new_temp`;
        consumed here, published or discarded). Raises OSError (nothing published).
        """
        entry = self.entry_path(key)
        try:
            self.ensure(section)
            if os.path.lexists(entry):
                quarantine(self.root, entry, "replaced by a fresh compile")
            write_record(self.record_path(key), record)
            twin = self._find_identical(record, share)
            published = self._link(*twin, key, record, accept) if twin is not None else None
            shared = published is not None
            if isinstance(content, TempFile):
                temp, content = content, b""  # consumed here, whatever happens next
                if shared:
                    temp.discard()
                else:
                    published = Identity.of(commit_temp(temp.path, temp.fd, entry, durable=True, read_only=True))
            if published is None:
                published = Identity.of(write_atomically(entry, content, durable=True, read_only=True))
            write_record(self.record_path(key), record._replace(identity=published))
            self.ensure(section)  # a concurrent gc may have collected the empty namespace
        except BaseException:
            if isinstance(content, TempFile):
                discard_temp(content.path, content.fd)
            with contextlib.suppress(OSError):
                os.unlink(self.record_path(key))
            raise
        return published, shared

    def new_temp(self, key: str) -> TempFile:
        """An exclusive, flocked temp file for `key`'s entry (a collector leaves it alone while we
        hold it), to be filled and handed to `publish`, or given up with `TempFile.discard`."""
        self.path.mkdir(mode=0o700, exist_ok=True)
        return TempFile(*locked_temp(self.entry_path(key)))

    def _find_identical(self, record: Record, share: bool | tuple[Namespace, str]) -> tuple[Namespace, str] | None:
        """A published entry with exactly `record`'s content, where `share` says to look (see `publish`).

        True: in this namespace, else in the root's others. A substituted artifact lives in the host
        engine's namespace while a program's copy of its bytes (YoWASP writes `serialize()` into its own
        file) is snapshotted into the namespace of the artifact's own section, which differs from the
        host's in CPU features: the same bytes. A (namespace, key): that entry, if its record names this
        content (`_link` checks the entry itself).
        """
        if share is False:
            return None
        if share is not True:
            owner, twin = share
            return share if twin != record.key and owner._records_content(twin, record) else None  # noqa: SLF001
        found = self._identical_entry(record)
        if found is not None:
            return self, found
        for other in namespaces(self.root):
            if other.path != self.path and (found := other._identical_entry(record)) is not None:  # noqa: SLF001
                return other, found
        return None

    def _records_content(self, key: str, record: Record) -> bool:
        """Whether the record of `key` here names `record`'s content (same size, same digest)."""
        found = read_record(self.record_path(key))
        return found is not None and (found[0].size, found[0].content_digest) == (record.size, record.content_digest)

    def _identical_entry(self, record: Record) -> str | None:
        """A published entry here whose content is `record`'s (same size, same recorded digest).

        One scandir and a stat per entry: only for snapshot publications (`share=True`), never on a hit.
        """
        with os.scandir(self.path) as it:
            for e in it:
                if not (e.name.endswith(ENTRY_SUFFIX) and is_keyed_name(e.name)) or key_of(e.name) == record.key:
                    continue
                try:
                    if e.stat(follow_symlinks=False).st_size != record.size:
                        continue
                except OSError:
                    continue
                if self._records_content(key_of(e.name), record):
                    return key_of(e.name)
        return None

    def _link(self, owner: Namespace, twin: str, key: str, record: Record,
              accept: Callable[[CheckedEntry], object] | None) -> Identity | None:
        """Make `key`'s entry a second name of the inode of `owner`'s entry `twin` (this namespace or
        another of the root), under `twin`'s lock; None if it cannot be.

        `accept` vets the twin's checked entry first (its exception goes up): a link changes the
        inode's ctime, so nothing may link a twin that is then refused. After the link both records
        get the identity stat'ed after it.
        """
        lock = owner.lock(twin)
        if not lock.try_acquire():
            return None  # being published, evicted or repaired right now: write our own copy
        try:
            try:
                checked = owner.check(twin, kind=None, section=None)
            except UntrustedEntryError:
                return None
            if checked is None:
                return None
            try:
                if checked.content_checked or checked.record.content_digest != record.content_digest:
                    return None  # not the very file that was published: never share what was not checked
                if accept is not None:
                    accept(checked)
            finally:
                checked.close()
            try:
                os.link(owner.entry_path(twin), self.entry_path(key), follow_symlinks=False)
            except OSError:
                return None
            fsync_directory(self.path)
            st = os.stat(self.entry_path(key), follow_symlinks=False)
            if (st.st_dev, st.st_ino) != (checked.stat.st_dev, checked.stat.st_ino):
                raise FileExistsError(errno.EEXIST, "replaced by another writer while publishing",
                                      str(self.entry_path(key)))
            identity = Identity.of(st)
            with contextlib.suppress(OSError):
                write_record(owner.record_path(twin), checked.record._replace(identity=identity))
            return identity
        finally:
            lock.release()

    def unpublish(self, key: str) -> None:
        """Remove what this process just published under `key` (it holds the lock): entry, then record."""
        for path in (self.entry_path(key), self.record_path(key)):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def quarantine_if_unchanged(self, key: str, seen: Identity | None, reason: str, *, lock_held: bool = False) -> bool:
        """Set the entry of `key` and its record aside if the path still names the file judged (`seen`).

        Takes the key's lock without waiting (unless the caller holds it): whoever holds it is
        compiling, publishing or repairing that key right now, and will leave a good entry. `seen`
        None (the entry could not be opened, or its record is wrong): whatever is there goes.
        Returns whether anything was set aside.
        """
        lock = self.lock(key)
        if not lock_held and not lock.try_acquire():
            return False
        try:
            entry = self.entry_path(key)
            try:
                current: Identity | None = Identity.of(os.stat(entry, follow_symlinks=False))
            except FileNotFoundError:
                current = None
            except OSError:
                return False
            if seen is not None and current is not None and current != seen:
                return False  # republished since it was judged: the new entry is someone else's good work
            if current is not None:
                quarantine(self.root, entry, reason)
            with contextlib.suppress(OSError):
                os.unlink(self.record_path(key))
            return True
        finally:
            lock.release()

    def evict(self, key: str) -> bool:
        """Unlink an entry and its record under the key's lock (a mapped entry lives on in its users)."""
        lock = self.lock(key)
        if not lock.try_acquire():
            return False  # being compiled, published or repaired right now
        try:
            for path in (self.entry_path(key), self.record_path(key)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        except OSError:
            lock.release()
            return False
        lock.release(unlink=True)
        return True

    def clear_key(self, key: str) -> bool | None:
        """Remove every file of `key` under its lock; None if the key is busy, else whether it had an entry."""
        lock = self.lock(key)
        if not lock.try_acquire():
            return None  # a writer between its record and its rename keeps its key: its entry is whole when it lands
        try:
            had_entry = os.path.lexists(self.entry_path(key))
            with os.scandir(self.path) as it:
                mine = [e.path for e in it if key_of(e.name) == key and is_keyed_name(e.name)
                        and not e.name.endswith(LOCK_SUFFIX)]
            for path in mine:
                with contextlib.suppress(OSError):
                    os.unlink(path)  # mapped entries live on in the processes using them
        finally:
            lock.release(unlink=True)
        return had_entry

    def remove_leftovers(self, files: KeyFiles) -> tuple[int, bool]:
        """Under a free key lock: a dead writer's temp files, a record without entry, an entry without
        record (nothing vouches for it). (temp files reaped, whether an entry remains)."""
        reaped = 0
        entry_left = files.entry is not None
        with self.key_free(files.key) as free:
            if free:
                for e in files.temps:
                    with contextlib.suppress(OSError):
                        os.unlink(e.path)
                        reaped += 1
                if files.entry is None and files.record is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(files.record.path)
                if files.record is None and files.entry is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(files.entry.path)
                    entry_left = False
        if not entry_left:
            lock = self.lock(files.key)
            if lock.try_acquire():
                lock.release(unlink=not self.entry_path(files.key).exists())
        return reaped, entry_left

    # --- the whole namespace --------------------------------------------------------------------

    def scan(self) -> Scan:
        """One scandir: each key's files; temp files of no key; files wasmcache did not write."""
        keys: dict[str, list[os.DirEntry[str]]] = {}
        other_temps: list[os.DirEntry[str]] = []
        foreign: list[os.DirEntry[str]] = []
        with os.scandir(self.path) as it:
            for e in it:
                if is_keyed_name(e.name):
                    keys.setdefault(key_of(e.name), []).append(e)
                elif is_temp_name(e.name):
                    other_temps.append(e)  # e.g. `engine.<random>.tmp`: its writer holds an flock on it
                elif e.name != NAMESPACE_ENGINE_FILE:
                    foreign.append(e)
        out = []
        for key, group in sorted(keys.items()):
            names = {e.name: e for e in group}
            temps = tuple(e for e in group if is_temp_name(e.name))
            out.append(KeyFiles(key, names.get(key + ENTRY_SUFFIX), names.get(key + RECORD_SUFFIX), temps))
        return Scan(out, other_temps, foreign)

    def remove_if_empty(self) -> bool:
        """Remove the directory if nothing but its engine file is left."""
        try:
            with os.scandir(self.path) as it:
                names = [e.name for e in it]
        except OSError:
            return False
        if any(name != NAMESPACE_ENGINE_FILE for name in names):
            return False
        try:
            if names:
                os.unlink(self.path / NAMESPACE_ENGINE_FILE)
            os.rmdir(self.path)
        except OSError:
            return False
        return True


def _substitutes_for(record: Record, entry_section: bytes, section: bytes) -> bool:
    """A substituted entry was compiled for a CPU level, not for this host's every feature: its section
    may differ from the namespace's in ISA flags this host has (and nothing else)."""
    if record.origin != "substituted":
        return False
    from ._compat import loadable  # noqa: PLC0415 - only for a substituted entry checked in full

    return loadable(entry_section, section) is None


def namespaces(root: Path) -> list[Namespace]:
    """Every namespace directory of the root (never through a symlink), sorted by name."""
    try:
        with os.scandir(root) as it:
            paths = sorted(Path(e.path) for e in it if is_namespace_name(e.name) and e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [Namespace(root, path) for path in paths]


def iter_entries(root: Path) -> Iterator[tuple[Namespace, KeyFiles]]:
    """Every key of every namespace that has an entry file (published or orphaned)."""
    for namespace in namespaces(root):
        try:
            scan = namespace.scan()
        except OSError:
            continue
        for files in scan.keys:
            if files.entry is not None:
                yield namespace, files
