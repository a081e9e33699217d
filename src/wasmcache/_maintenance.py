"""Whole-root operations: the usage record, gc (LRU + reaping), clear, and listing.

None of this is on the hit path. Every operation that deletes or moves files requires our marker
in the root, so a mistaken `--cache-dir ~/.cache` is refused, not wiped. (verify: `_verify.py`.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ._core import (
    DIGEST_MEMO_KINDS,
    DIGESTS_DIR,
    ENGINES_DIR,
    GC_LOCK_NAME,
    NAMESPACE_ENGINE_FILE,
    QUARANTINE_DIR,
    Namespace,
    existing_root,
    immutable_fix,
    is_entry_name,
    is_memo_name,
    is_namespace_name,
    is_temp_name,
    iter_entries,
    log,
    namespaces,
    parse_engine_memo,
    read_record,
    read_small_file,
    reap_if_dead,
    shell_word,
    unsafe_fix,
    unsafe_reason,
)
from ._errors import CacheError
from ._lock import KeyLock, holder_name, wait_for_lock
from ._stats import read_usage, write_usage

if TYPE_CHECKING:
    from collections.abc import Iterator

MAX_AGE: Final = 30 * 24 * 3600.0  # entries (and so namespaces of an old wasmtime) unused this long go
_QUARANTINE_AGE: Final = 24 * 3600.0
# Digest and engine memos are only shortcuts (a digest is computed again, an engine probed again), one
# small file each (a 4 KiB block on disk): a tool that loads fresh temporary files makes one per file. gc
# keeps the most recently used this many of each kind (~4 MiB each; a hit marks a memo used at most once a
# day, `MEMO_TOUCH_INTERVAL`), none at --max-size 0; they are bounded by their count, outside max_size.
MEMO_KEEP = 1_000
# The usage record is recounted by a collection at least this often, whatever the publications say.
_USAGE_RECOUNT_INTERVAL: Final = 24 * 3600.0
_ACCOUNT_WAIT: Final = 2.0


def scan_usage(root: Path) -> tuple[int, int]:
    """(entries, bytes) under the whole root, counted as a collection counts them: the files of the keys
    (entries, records) and quarantine; neither memos (bounded by their count, see MEMO_KEEP) nor a
    namespace's engine file.

    An inode with several names (entries that share identical content) is counted once.
    """
    entries = 0
    total = 0
    inodes: set[tuple[int, int]] = set()
    for directory in [*(ns.path for ns in namespaces(root)), root / QUARANTINE_DIR]:
        for e, st in _files_of(directory):
            if e.name == NAMESPACE_ENGINE_FILE and directory.name != QUARANTINE_DIR:
                continue
            inode = (st.st_dev, st.st_ino)
            if st.st_nlink == 1 or inode not in inodes:
                total += st.st_size
                inodes.add(inode)
            if is_entry_name(e.name) and is_namespace_name(directory.name):
                entries += 1
    return entries, total


def account_publication(root: Path, added_bytes: int, max_size: int) -> None:
    """Add one publication to the usage record; collect when over the bound (so no load ever scans)."""
    with _usage_held(root) as held:
        if not held:
            return  # a collection under way (or stopped: not worth a wait) counts this entry itself
        usage = read_usage(root)
        if usage is None or usage.age > _USAGE_RECOUNT_INTERVAL or usage.size_bytes + added_bytes > max_size:
            collect_garbage(root, max_size)
        else:
            write_usage(root, usage.entries + 1, usage.size_bytes + added_bytes)


def account_repair(root: Path) -> None:
    """Count the root again after a load set a bad entry aside (its record gone, the entry and a note in
    quarantine/, or the entry unlinked where it could not be moved): rare, and then exact, so the
    republication that follows adds itself to a true count."""
    with _usage_held(root) as held:
        if held:
            write_usage(root, *scan_usage(root))


@contextlib.contextmanager
def _usage_held(root: Path) -> Iterator[bool]:
    """The collector's lock, for a change of the usage record: whether it was had (never an error)."""
    gc_lock = KeyLock(root / GC_LOCK_NAME)
    try:
        # Publishers hold it for a read and a write; a collection for a scan (~0.2 s at 10,000
        # entries), after which its count includes what we just published.
        held = wait_for_lock(gc_lock, _ACCOUNT_WAIT)[0]
    except OSError:
        held = False
    try:
        yield held
    except (OSError, CacheError) as exc:
        log.warning("wasmcache: automatic gc of %s failed: %s", root, exc)
    finally:
        if held:
            gc_lock.release()


def _cannot(root: Path, action: str, exc: OSError) -> CacheError:
    """One line for a root we may not change: read-only, or something in the way (`gc.lock` a directory ...)."""
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(root) else ""
    hint = " (a read-only cache can only be read)" if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else ""
    return CacheError(f"{root}: cannot {action}: {exc.strerror or exc}{where}{hint}")


def collect_garbage_locked(root: Path, max_size: int) -> GcReport:
    """`collect_garbage` under the collector's lock, for `gc`: one-line errors for a root that is not ours
    or cannot be written; a root that does not exist has nothing to collect."""
    if not existing_root(root, "collect"):
        return GcReport()
    lock = KeyLock(root / GC_LOCK_NAME)
    try:
        _take_gc_lock(lock, root, "collect")
        return collect_garbage(root, max_size)
    except OSError as exc:
        raise _cannot(root, "collect", exc) from None
    finally:
        lock.release()


def _take_gc_lock(lock: KeyLock, root: Path, action: str) -> None:
    """Wait for a collection or clear under way (said once, at -v); a stopped one is one line, not a hang."""

    def waiting(pid: int | None) -> None:
        log.info("wasmcache: waiting for %s, which holds %s", holder_name(pid), lock.path)

    taken, stopped_pid = wait_for_lock(lock, None, waiting)
    if not taken:
        raise CacheError(f"{root}: cannot {action}: process {stopped_pid} holds its gc lock and is stopped "
                         f"(SIGSTOP or Ctrl-Z): continue it (kill -CONT {stopped_pid}) or end it, then try again")


@dataclass
class GcReport:
    evicted_entries: int = 0
    freed_bytes: int = 0  # evicted entries and their records, and quarantined copies gc removed
    reaped_temp_files: int = 0
    removed_namespaces: int = 0
    entries: int = 0
    size_bytes: int = 0
    # Entries over the bound (or older than max_age) that stayed: a writer held them, or their namespace
    # cannot be written (listed in `unwritable_namespaces`: a read-only mount, chattr +i ...).
    not_evicted: int = 0
    unwritable_namespaces: list[str] = field(default_factory=list)
    unremovable: list[str] = field(default_factory=list)  # entries whose files refused to go (immutable ...)
    held_by_writers: int = 0  # entries a writer held the lock of (the next gc evicts them)
    set_aside: int = 0  # entry files no record vouches for, moved to quarantine/ (kept a day there)


@dataclass
class _Candidate:
    namespace: Namespace
    key: str
    last_used: float
    record_size: int
    entry_size: int
    inode: tuple[int, int]  # identical entries may share one (see `Namespace.publish`)


def collect_garbage(root: Path, max_size: int, *, max_age: float = MAX_AGE) -> GcReport:
    """Evict LRU entries down to `max_size`; reap dead writers' temp files; write the exact usage.

    The caller holds gc.lock.
    """
    report = GcReport()
    now = time.time()
    candidates = _candidates(root, report)
    for directory in small_file_directories(root):
        report.reaped_temp_files += len(dead_temp_files(directory, reap=True))
    quarantined, expired = _expire_files(root / QUARANTINE_DIR, now - _QUARANTINE_AGE)
    report.freed_bytes += expired
    for directory in (root / DIGESTS_DIR, root / ENGINES_DIR):
        _expire_memos(directory, now - max_age, MEMO_KEEP if max_size > 0 else 0)
    candidates.sort(key=lambda c: c.last_used)
    names: dict[tuple[int, int], int] = {}  # names per inode: its bytes count once, and go with its last name
    for c in candidates:
        names[c.inode] = names.get(c.inode, 0) + 1
    total = quarantined + sum(c.record_size for c in candidates) + sum(
        {c.inode: c.entry_size for c in candidates}.values())
    if total > max_size and quarantined:  # bad copies kept for inspection go before any good entry
        dropped = _expire_files(root / QUARANTINE_DIR, now + 1)[1]
        total -= dropped
        report.freed_bytes += dropped
    kept: list[_Candidate] = []
    for c in candidates:
        if not (total > max_size or now - c.last_used > max_age):
            kept.append(c)
            continue
        if _evicted(c, report):
            names[c.inode] -= 1
            freed = c.record_size + (c.entry_size if names[c.inode] == 0 else 0)
            total -= freed
            report.evicted_entries += 1
            report.freed_bytes += freed
        else:
            kept.append(c)
    report.removed_namespaces = sum(ns.remove_if_empty() for ns in namespaces(root))
    report.entries = len(kept)
    report.size_bytes = total
    with contextlib.suppress(OSError):
        write_usage(root, report.entries, total)
    if report.evicted_entries or report.reaped_temp_files:
        log.info("wasmcache: gc of %s evicted %d entries (%d bytes), reaped %d temp files", root,
                 report.evicted_entries, report.freed_bytes, report.reaped_temp_files)
    return report


def _candidates(root: Path, report: GcReport) -> list[_Candidate]:
    """Every published entry of the root, with its last use and sizes; leftovers of dead writers go (counted
    in `report`) on the way."""
    candidates: list[_Candidate] = []
    for namespace in namespaces(root):
        scan = namespace.scan()
        report.reaped_temp_files += sum(reap_if_dead(e.path) for e in scan.other_temps)
        for files in scan.keys:
            entry, record = files.entry, files.record
            if not files.published:
                # A temp file, a record without an entry (a writer killed before its rename) or an
                # entry without a record (nothing vouches for it): leftovers if nobody holds the key.
                reaped, entry_left = namespace.remove_leftovers(files)
                report.reaped_temp_files += reaped
                report.set_aside += files.entry is not None and not entry_left
                if not entry_left:
                    continue
            if entry is None:
                continue
            try:
                entry_stat = entry.stat(follow_symlinks=False)
                record_size = record.stat(follow_symlinks=False).st_size if record is not None else 0
                used = (record or entry).stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            candidates.append(_Candidate(namespace, files.key, used, record_size, entry_stat.st_size,
                                         (entry_stat.st_dev, entry_stat.st_ino)))
    return candidates


def _evicted(c: _Candidate, report: GcReport) -> bool:
    """Evict `c`; if it stays, note in `report` why (its namespace cannot be written, a file of it refused to
    go, or a writer holds it)."""
    evicted = c.namespace.evict(c.key)
    if evicted is True:
        return True
    note_not_evicted(report, c.namespace, evicted)
    return False


def note_not_evicted(report: GcReport, namespace: Namespace, refused: str | None) -> None:
    """Why an entry gc or clear meant to remove stayed: its namespace cannot be written, `refused` (a file of
    it that would not go), or a writer holds it (`refused` None)."""
    report.not_evicted += 1
    if not os.access(namespace.path, os.W_OK):
        if str(namespace.path) not in report.unwritable_namespaces:
            report.unwritable_namespaces.append(str(namespace.path))
    elif refused is not None:
        report.unremovable.append(refused)
    else:
        report.held_by_writers += 1


def small_file_directories(root: Path) -> tuple[Path, ...]:
    """Where the small files (usage, markers, memos) are written, each through a temp file of its own."""
    # (The root itself may be a link, `~/.cache/wasmcache -> /data/...`: only what is inside it is never followed.)
    return Path(os.path.realpath(root)), root / DIGESTS_DIR, root / ENGINES_DIR


def dead_temp_files(directory: Path, *, reap: bool = False) -> list[str]:
    """The temp files of dead writers of the small files in `directory` (gc reaps them, doctor names them)."""
    return [e.path for e, _st in _files_of(directory, quiet=True)
            if is_temp_name(e.name) and reap_if_dead(e.path, dry_run=not reap)]


def _expire_files(directory: Path, cutoff: float) -> tuple[int, int]:
    """Remove the files of `directory` older than `cutoff`: (the bytes of those that remain, bytes removed)."""
    remaining = removed = 0
    for e, st in _files_of(directory):
        if st.st_mtime < cutoff:
            try:
                os.unlink(e.path)
            except OSError:
                remaining += st.st_size
            else:
                removed += st.st_size
        else:
            remaining += st.st_size
    return remaining, removed


def _expire_memos(directory: Path, cutoff: float, keep: int) -> None:
    """Remove the memos of `directory` unused since `cutoff` and, past `keep` of one kind, the least recently
    used. A memo is a file of a memo's name holding a memo (`_memo_kind`): nothing else there is touched."""
    kinds: dict[bytes, list[tuple[float, str]]] = {}
    for e, st in _files_of(directory, memos=True):
        kind = _memo_kind(directory.name, e.path)
        if kind is None:
            continue
        if st.st_mtime < cutoff:
            with contextlib.suppress(OSError):
                os.unlink(e.path)
        else:
            kinds.setdefault(kind, []).append((st.st_mtime, e.path))
    for used in kinds.values():
        used.sort()
        for _mtime, path in used[:max(0, len(used) - keep)]:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _memo_kind(directory: str, path: str) -> bytes | None:
    """What the memo at `path` remembers (an engine's settings, a file's identity, a key made of a digest; an
    older version's digest memo), or None for a file that holds no memo of ours."""
    raw = read_small_file(path, 1 << 16)
    if raw is None:
        return None
    if directory == ENGINES_DIR:
        return b"engine" if parse_engine_memo(raw) is not None else None
    kind, colon, _ = raw[:32].partition(b":")
    if colon and kind in DIGEST_MEMO_KINDS:
        return kind
    old, space, _ = raw.partition(b" ")  # before 2026-12-04: "<16 hex of blake3(identity)> <digest>"
    return b"legacy" if space and len(old) == 16 and not old.strip(b"0123456789abcdef") else None


def own_mode_fix(directory: Path | str) -> str | None:
    """`chmod u+w DIR` for a directory of this user's whose own write bit is off (its mode changed by hand);
    None for anything else (a read-only mount, chattr +i, another user's: each said in its own words)."""
    try:
        st = os.stat(directory)
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & stat.S_IWUSR:
        return None
    return f"chmod u+w {shell_word(directory)}"


def unwritable_cause(directory: Path | str) -> tuple[str, str, bool]:
    """Why this user cannot write `directory` of a root, and what to run: (cause, fix, meant), `meant` for a
    read-only file system (an image's cache is read-only on purpose). Its mode, else the mount, else an
    immutable flag (chattr +i) or the like: doctor, gc and clear say it in these words."""
    mode_fix = own_mode_fix(directory)
    if mode_fix is not None:
        return "its mode", mode_fix, False
    try:
        read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        fix = "nothing, if it is meant to be read-only (an image's cache); else remount it read-write"
        return "a read-only file system", fix, True
    return "an immutable flag, or the like", immutable_fix(directory), False


def unreadable_fix(directory: Path) -> str:
    """What to do about a directory of a root that its user cannot read or write: its mode changed by hand,
    or (the same advice as for a namespace) another user owns it."""
    with contextlib.suppress(OSError):
        reason = unsafe_reason(os.lstat(directory))
        if reason is not None:
            return unsafe_fix(directory, reason)
    return f"chmod u+rwx {shell_word(directory)}"


def _files_of(directory: Path, *, memos: bool = False, quiet: bool = False) -> list[
        tuple[os.DirEntry[str], os.stat_result]]:
    """The regular files of `directory` and their stats (`memos`: only memo names); a directory that
    cannot be read is one warning (its files stay; `quiet`: said by another pass over it), not the end of a
    collection."""
    found: list[tuple[os.DirEntry[str], os.stat_result]] = []
    if os.path.islink(directory):
        return found  # memos are never read, written or removed through a link out of the root (doctor says so)
    try:
        with os.scandir(directory) as it:
            for e in it:
                if memos and not is_memo_name(directory.name, e.name):
                    continue
                with contextlib.suppress(OSError):
                    st = e.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        found.append((e, st))
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as exc:
        if not quiet:
            log.warning("wasmcache: cannot read %s (%s): its files are left as they are; fix: %s", directory,
                        exc.strerror or exc, unreadable_fix(directory))
    return found


def clear_root(root: Path, left: GcReport | None = None) -> int:
    """Remove every entry of every namespace (and memos, quarantine); keep the root and its markers. `left`: what
    stayed, and why, in gc's words (`note_not_evicted`)."""
    if not existing_root(root, "clear"):
        return 0
    gc_lock = KeyLock(root / GC_LOCK_NAME)
    try:
        _take_gc_lock(gc_lock, root, "clear")
    except OSError as exc:
        raise _cannot(root, "clear", exc) from None
    removed = 0
    try:
        for namespace in namespaces(root):
            for files in namespace.scan().keys:
                outcome = namespace.clear_key(files.key)
                removed += outcome is True
                stayed = isinstance(outcome, str) or (outcome is None and files.entry is not None)
                if left is not None and stayed:
                    note_not_evicted(left, namespace, outcome if isinstance(outcome, str) else None)
            namespace.remove_if_empty()
        import shutil  # noqa: PLC0415

        shutil.rmtree(root / QUARANTINE_DIR, ignore_errors=True)
        for directory in (root / DIGESTS_DIR, root / ENGINES_DIR):
            _expire_memos(directory, time.time() + 1, 0)  # every memo; files not ours stay
        with contextlib.suppress(OSError):
            os.rmdir(root / DIGESTS_DIR)
        with contextlib.suppress(OSError):
            write_usage(root, *scan_usage(root))  # what could not be removed (chattr +i ...) still counts
    finally:
        gc_lock.release()
    return removed


# --- listing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryInfo:
    namespace: str
    key: str
    kind: str
    size: int
    last_used: float
    created: float
    source: str
    wasmtime_version: str
    path: str
    origin: str = "?"  # compiled | snapshot | remote | substituted
    substituter: str | None = None  # origin "substituted": the URL
    level: str | None = None  # origin "substituted": the CPU level it was compiled for


def entry_info(namespace: Namespace, key: str) -> EntryInfo | None:
    """What `ls` says of one entry (None if it has none)."""
    entry = namespace.entry_path(key)
    try:
        st = os.stat(entry, follow_symlinks=False)
    except OSError:
        return None
    found = read_record(namespace.record_path(key))
    if found is None:
        return EntryInfo(namespace.name, key, "?", st.st_size, st.st_mtime, st.st_mtime, "?", "?", str(entry))
    record, record_stat = found
    return EntryInfo(namespace.name, key, record.kind, st.st_size, record_stat.st_mtime, record.created,
                     record.source, record.wasmtime_version, str(entry), record.origin, record.substituter,
                     record.level)


def list_entries(root: Path) -> list[EntryInfo]:
    if not existing_root(root, "list"):
        return []
    out = [info for namespace, files in iter_entries(root) if (info := entry_info(namespace, files.key)) is not None]
    out.sort(key=lambda info: info.last_used)
    return out
