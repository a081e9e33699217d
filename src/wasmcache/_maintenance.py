"""Whole-root operations: usage, gc (LRU + reaping), clear, verify, listing.

None of this is on the hit path. Every operation that deletes or moves files requires our marker
in the root, so a mistaken `--cache-dir ~/.cache` is refused, not wiped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ._elf import ENGINE_SECTION, find_section
from ._engine import fingerprint_of_section
from ._layout import (
    ENTRY_SUFFIX,
    KEY_RE,
    LOCK_SUFFIX,
    MARKER_NAME,
    NAMESPACE_ENGINE_FILE,
    NAMESPACE_PREFIX,
    RECORD_SUFFIX,
    TEMP_SUFFIX,
    namespace_name,
    require_marker,
)
from ._store import (
    O_CLOEXEC,
    O_NOFOLLOW,
    Identity,
    KeyLock,
    Record,
    lock_path,
    quarantine,
    read_fd,
    read_record,
    reap_if_dead,
    record_path,
    try_lock,
    write_record,
    write_small_file_atomically,
)

log = logging.getLogger("wasmcache")

MAX_AGE: Final = 30 * 24 * 3600.0  # entries (and so namespaces of an old wasmtime) unused this long go
_QUARANTINE_AGE: Final = 24 * 3600.0
_ROOT_FILES: Final = frozenset({MARKER_NAME, "CACHEDIR.TAG", "usage", "gc.lock"})
_ROOT_DIRS: Final = frozenset({"engines", "digests", "quarantine"})
_USAGE: Final = "usage"


def _namespaces(root: Path) -> list[Path]:
    try:
        with os.scandir(root) as it:
            return sorted(Path(e.path) for e in it
                          if e.name.startswith(NAMESPACE_PREFIX) and e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def _key_of(name: str) -> str:
    return name.split(".", 1)[0]


def scan_usage(root: Path) -> tuple[int, int]:
    """(entries, bytes) under the whole root: entries, records, quarantine and memo files."""
    entries = 0
    total = 0
    for directory in [*_namespaces(root), root / "quarantine", root / "digests", root / "engines"]:
        try:
            with os.scandir(directory) as it:
                for e in it:
                    with contextlib.suppress(OSError):
                        total += e.stat(follow_symlinks=False).st_size
                    if e.name.endswith(ENTRY_SUFFIX) and directory.name.startswith(NAMESPACE_PREFIX):
                        entries += 1
        except (FileNotFoundError, NotADirectoryError):
            continue
    return entries, total


def read_usage(root: Path) -> tuple[int | None, float]:
    """The approximate usage kept in ROOT/usage, and its age in seconds (None if unknown)."""
    try:
        st = os.stat(root / _USAGE)
        value = int((root / _USAGE).read_text(encoding="ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None, 0.0
    return value, time.time() - st.st_mtime


def write_usage(root: Path, value: int) -> None:
    write_small_file_atomically(root / _USAGE, f"{value}\n".encode())


@dataclass
class GcReport:
    evicted_entries: int = 0
    freed_bytes: int = 0
    reaped_temp_files: int = 0
    removed_namespaces: int = 0
    entries: int = 0
    size_bytes: int = 0


@dataclass
class _Candidate:
    namespace: Path
    key: str
    last_used: float
    size: int


def collect_garbage(root: Path, max_size: int, *, require: bool = False, max_age: float = MAX_AGE) -> GcReport:
    """Evict LRU entries down to `max_size`; reap dead writers' temp files. Caller holds gc.lock."""
    if require:
        require_marker(root, "collect")
    report = GcReport()
    now = time.time()
    candidates: list[_Candidate] = []
    other_bytes = 0
    for namespace in _namespaces(root):
        files: dict[str, list[os.DirEntry[str]]] = {}
        with os.scandir(namespace) as it:
            for e in it:
                files.setdefault(_key_of(e.name), []).append(e)
        for key, group in files.items():
            if not KEY_RE.match(key):
                # e.g. the namespace's own `engine.<random>.tmp`: its writer holds an flock on it.
                report.reaped_temp_files += sum(reap_if_dead(e.path) for e in group if e.name.endswith(TEMP_SUFFIX))
                continue
            names = {e.name: e for e in group}
            entry = names.get(key + ENTRY_SUFFIX)
            record = names.get(key + RECORD_SUFFIX)
            temps = [e for e in group if e.name.endswith(TEMP_SUFFIX)]
            if temps or entry is None or record is None:
                # A temp file, a record without an entry (a writer killed before its rename) or an
                # entry without a record (nothing vouches for it): leftovers if nobody holds the key.
                with try_lock(lock_path(namespace, key)) as free:
                    if free:
                        for e in temps:
                            with contextlib.suppress(OSError):
                                os.unlink(e.path)
                                report.reaped_temp_files += 1
                        if entry is None and record is not None:
                            with contextlib.suppress(OSError):
                                os.unlink(record.path)
                        if record is None and entry is not None:
                            with contextlib.suppress(OSError):
                                os.unlink(entry.path)
                            entry = None
                if entry is None:
                    _remove_free_lock(namespace, key)
                    continue
            try:
                size = entry.stat(follow_symlinks=False).st_size
                size += record.stat(follow_symlinks=False).st_size if record is not None else 0
                used = (record or entry).stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            candidates.append(_Candidate(namespace, key, used, size))
    for directory in (root, root / "digests", root / "engines"):
        report.reaped_temp_files += _reap_dead_temp_files(directory)
    for directory, age in ((root / "quarantine", _QUARANTINE_AGE), (root / "digests", max_age),
                           (root / "engines", max_age)):
        other_bytes += _expire_files(directory, now - age)
    candidates.sort(key=lambda c: c.last_used)
    total = other_bytes + sum(c.size for c in candidates)
    kept: list[_Candidate] = []
    for c in candidates:
        if (total > max_size or now - c.last_used > max_age) and _evict(c):
            total -= c.size
            report.evicted_entries += 1
            report.freed_bytes += c.size
        else:
            kept.append(c)
    report.removed_namespaces = _remove_empty_namespaces(root)
    report.entries = len(kept)
    report.size_bytes = total
    with contextlib.suppress(OSError):
        write_usage(root, total)
    if report.evicted_entries or report.reaped_temp_files:
        log.info("wasmcache: gc of %s evicted %d entries (%d bytes), reaped %d temp files", root,
                 report.evicted_entries, report.freed_bytes, report.reaped_temp_files)
    return report


def _reap_dead_temp_files(directory: Path) -> int:
    """Temp files of dead writers of the small files (usage, markers, memos) in `directory`."""
    try:
        with os.scandir(directory) as it:
            temps = [e.path for e in it if e.name.endswith(TEMP_SUFFIX) and e.is_file(follow_symlinks=False)]
    except OSError:
        return 0
    return sum(reap_if_dead(path) for path in temps)


def _evict(c: _Candidate) -> bool:
    """Unlink an entry and its record under the key lock (a mapped entry lives on in its users)."""
    lock = KeyLock(lock_path(c.namespace, c.key))
    try:
        if not lock.acquire(blocking=False):
            return False  # being compiled, published or repaired right now
    except OSError:
        return False
    try:
        for suffix in (ENTRY_SUFFIX, RECORD_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(c.namespace / f"{c.key}{suffix}")
    except OSError:
        lock.release()
        return False
    lock.release(unlink=True)
    return True


def _remove_free_lock(namespace: Path, key: str) -> None:
    lock = KeyLock(lock_path(namespace, key))
    try:
        if lock.acquire(blocking=False):
            if not (namespace / f"{key}{ENTRY_SUFFIX}").exists():
                lock.release(unlink=True)
                return
            lock.release()
    except OSError:
        lock.release()


def _expire_files(directory: Path, cutoff: float) -> int:
    remaining = 0
    try:
        with os.scandir(directory) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                    if st.st_mtime < cutoff:
                        os.unlink(e.path)
                    else:
                        remaining += st.st_size
                except OSError:
                    continue
    except (FileNotFoundError, NotADirectoryError):
        pass
    return remaining


def _remove_empty_namespaces(root: Path) -> int:
    removed = 0
    for namespace in _namespaces(root):
        try:
            with os.scandir(namespace) as it:
                names = [e.name for e in it]
        except OSError:
            continue
        if any(name != NAMESPACE_ENGINE_FILE for name in names):
            continue
        with contextlib.suppress(OSError):
            if names:
                os.unlink(namespace / NAMESPACE_ENGINE_FILE)
            os.rmdir(namespace)
            removed += 1
    return removed


def clear_root(root: Path) -> int:
    """Remove every entry of every namespace (and memos, quarantine); keep the root and its markers."""
    require_marker(root, "clear")
    removed = 0
    with KeyLock(root / "gc.lock"):
        for namespace in _namespaces(root):
            with os.scandir(namespace) as it:
                keys = sorted({_key_of(e.name) for e in it if e.name != NAMESPACE_ENGINE_FILE})
            for key in keys:
                # Under the key's lock: a writer between its record and its rename keeps its key
                # (its entry is whole when it lands), instead of being left with half a pair.
                lock = KeyLock(lock_path(namespace, key))
                try:
                    if not lock.acquire(blocking=False):
                        continue
                except OSError:
                    continue
                removed += (namespace / f"{key}{ENTRY_SUFFIX}").exists()
                with os.scandir(namespace) as it:
                    mine = [e.path for e in it if _key_of(e.name) == key and not e.name.endswith(LOCK_SUFFIX)]
                for path in mine:
                    with contextlib.suppress(OSError):
                        os.unlink(path)  # mapped entries live on in the processes using them
                lock.release(unlink=True)
        _remove_empty_namespaces(root)
        import shutil  # noqa: PLC0415

        for name in ("digests", "quarantine"):
            shutil.rmtree(root / name, ignore_errors=True)
        with contextlib.suppress(OSError):
            write_usage(root, 0)
    return removed


# --- verify -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One problem `verify` found: which file, what is wrong, what fixes it."""

    path: str
    problem: str  # "corrupt" | "mismatched" | "orphan" | "foreign"
    detail: str
    fix: str


@dataclass
class VerifyReport:
    checked: int = 0
    intact: int = 0
    findings: list[Finding] = field(default_factory=list)
    fixed: int = 0
    rerecorded: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings


_FIX: Final = "run `wasmcache verify --fix` (quarantines it; the next load recompiles)"


def verify_root(root: Path, *, fix: bool = False) -> VerifyReport:
    """Check each namespace against its own recorded fingerprint and each entry against its record."""
    if fix:
        require_marker(root, "fix")
    report = VerifyReport()
    if not root.is_dir():
        return report
    bad: list[Path] = []

    def finding(path: Path, problem: str, detail: str, fix_text: str = _FIX) -> None:
        report.findings.append(Finding(str(path), problem, detail, fix_text))
        bad.append(path)

    with os.scandir(root) as it:
        for e in it:
            if e.name in _ROOT_FILES or e.name in _ROOT_DIRS or e.name.startswith(NAMESPACE_PREFIX):
                if e.name.startswith(NAMESPACE_PREFIX) and not e.is_dir(follow_symlinks=False):
                    finding(Path(e.path), "foreign", "namespace is not a directory")
                continue
            if e.name.endswith(TEMP_SUFFIX):
                continue
            finding(Path(e.path), "foreign", "file wasmcache did not write",
                    "remove it by hand, or `wasmcache verify --fix` to quarantine it")
    for namespace in _namespaces(root):
        section = _namespace_section(namespace)
        if section is None:
            # A writer killed between a concurrent gc's removal of the engine file and its own
            # re-creation of it leaves entries without it: their engine sections still name the
            # namespace, which is all the file is for. (The next publication restores it.)
            section = _section_from_entries(namespace)
        if section is None or namespace_name(fingerprint_of_section(section)) != namespace.name:
            detail = "namespace has no engine record" if section is None else "engine record does not match its name"
            report.findings.append(Finding(str(namespace), "mismatched", detail,
                                           "`wasmcache clear` (or remove this directory)"))
            section = None
        with os.scandir(namespace) as it:
            names = sorted(e.name for e in it)
        for name in names:
            path = namespace / name
            if name == NAMESPACE_ENGINE_FILE or name.endswith((TEMP_SUFFIX, LOCK_SUFFIX)):
                continue
            key = _key_of(name)
            if not KEY_RE.match(key) or not name.endswith((ENTRY_SUFFIX, RECORD_SUFFIX)):
                finding(path, "foreign", "file wasmcache did not write")
                continue
            if name.endswith(RECORD_SUFFIX):
                # A record without an entry is what a writer killed between writing its record and
                # renaming its entry leaves, like a temp file: harmless, reaped by gc, not a finding.
                continue
            report.checked += 1
            problem = _check_entry(namespace, key, section, report, fix=fix)
            if problem is None:
                report.intact += 1
            else:
                finding(path, *problem)
    if fix:
        for path in bad:
            if quarantine(root, path, "wasmcache verify --fix") is not None or not path.exists():
                report.fixed += 1
            if path.name.endswith(ENTRY_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(record_path(path.parent, _key_of(path.name)))
    return report


def _section_from_entries(namespace: Path) -> bytes | None:
    """The engine section of an entry of `namespace` whose fingerprint names it, if any."""
    for entry in sorted(namespace.glob(f"*{ENTRY_SUFFIX}")):
        try:
            fd = os.open(entry, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        except OSError:
            continue
        try:
            section = find_section(fd, ENGINE_SECTION)
        except (OSError, ValueError):
            continue
        finally:
            os.close(fd)
        if namespace_name(fingerprint_of_section(section)) == namespace.name:
            return section
    return None


def _namespace_section(namespace: Path) -> bytes | None:
    try:
        with open(namespace / NAMESPACE_ENGINE_FILE, "rb") as f:
            return f.read(1 << 20)
    except OSError:
        return None


class UntrustedEntryError(Exception):
    """Why an entry cannot be trusted: `problem` is corrupt | mismatched | orphan."""

    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(f"{problem}: {detail}")
        self.problem = problem
        self.detail = detail


def read_checked_entry(namespace: Path, key: str, section: bytes | None) -> tuple[bytes, os.stat_result, Record]:
    """The entry's bytes, its stat and its record, once its content matches the record's digest and its
    engine section matches `section` (the namespace's); else UntrustedEntryError.

    What verify checks and what push signs: nothing is uploaded that a load would not accept.
    """
    import blake3  # noqa: PLC0415

    found = read_record(record_path(namespace, key))
    if found is None:
        raise UntrustedEntryError("orphan", "entry without a valid record")
    record, _ = found
    if record.key != key:
        raise UntrustedEntryError("mismatched", "record belongs to another key")
    try:
        fd = os.open(namespace / f"{key}{ENTRY_SUFFIX}", os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
    except OSError as exc:
        raise UntrustedEntryError("corrupt", f"cannot open safely: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedEntryError("corrupt", "not a regular file")
        data = bytes(read_fd(fd, st.st_size))
    except OSError as exc:
        raise UntrustedEntryError("corrupt", f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) != record.size or blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest() != \
            record.content_digest:
        raise UntrustedEntryError("corrupt", f"content digest differs from its record ({len(data)} bytes, "
                                      f"recorded {record.size})")
    try:
        entry_section = find_section(data, ENGINE_SECTION)
    except ValueError as exc:
        raise UntrustedEntryError("corrupt", str(exc)) from None
    if section is not None and entry_section != section:
        raise UntrustedEntryError("mismatched", "compiled by another engine configuration than its namespace")
    return data, st, record


def _check_entry(
    namespace: Path, key: str, section: bytes | None, report: VerifyReport, *, fix: bool
) -> tuple[str, str] | None:
    try:
        _, st, record = read_checked_entry(namespace, key, section)
    except UntrustedEntryError as problem:
        return problem.problem, problem.detail
    if record.identity != Identity.of(st):
        report.rerecorded += fix
        if fix:
            with contextlib.suppress(OSError):
                write_record(record_path(namespace, key), record._replace(identity=Identity.of(st)))
    return None


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


def list_entries(root: Path) -> list[EntryInfo]:
    out: list[EntryInfo] = []
    for namespace in _namespaces(root):
        with os.scandir(namespace) as it:
            names = [e.name for e in it if e.name.endswith(ENTRY_SUFFIX)]
        for name in names:
            key = _key_of(name)
            entry = namespace / name
            found = read_record(record_path(namespace, key))
            try:
                st = os.stat(entry, follow_symlinks=False)
            except OSError:
                continue
            if found is None:
                out.append(EntryInfo(namespace.name, key, "?", st.st_size, st.st_mtime, st.st_mtime, "?", "?",
                                     str(entry)))
                continue
            record, record_stat = found
            out.append(EntryInfo(namespace.name, key, record.kind, st.st_size, record_stat.st_mtime,
                                 record.created, record.source, record.wasmtime_version, str(entry)))
    out.sort(key=lambda info: info.last_used)
    return out


