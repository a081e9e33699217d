"""`verify`: every entry checked in full against its record and its namespace's engine; `fix` heals.

The check is `Namespace.check`, the one the hit path and `push` use; `fix` sets bad entries
aside with `Namespace.quarantine_if_unchanged` (under the key lock, only if still the file judged).
A path a load refuses because others could rewrite it (`unsafe_reason`: the root, digests/, engines/,
a namespace, an entry) is a finding too, with the load's own fix: `verify` never calls a root ok that
every load refuses. `fix` leaves modes and owners alone (the fix names the command).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ._core import (
    DIGESTS_DIR,
    ENGINES_DIR,
    ENTRY_SUFFIX,
    READ_FLAGS,
    ROOT_DIRS,
    ROOT_FILES,
    Identity,
    Namespace,
    UntrustedEntryError,
    disabled_by_environment,
    existing_root,
    fingerprint_of_section,
    immutable_fix,
    is_namespace_name,
    is_temp_name,
    namespace_name,
    namespaces,
    read_record,
    unsafe_fix,
    unsafe_reason,
)
from ._elf import ENGINE_SECTION, find_section
from ._maintenance import scan_usage
from ._stats import write_usage


@dataclass(frozen=True)
class Finding:
    """One problem `verify` found: which file, what is wrong, what fixes it."""

    path: str
    problem: str  # "corrupt" | "mismatched" | "orphan" | "foreign" | "unsafe"
    detail: str
    fix: str


@dataclass
class VerifyReport:
    checked: int = 0
    intact: int = 0
    findings: list[Finding] = field(default_factory=list)
    fixed: int = 0
    rerecorded: int = 0
    # Intact entries whose file is not the one published (a chmod, a copy, a restore): each load checks them in
    # full until their identity is recorded again (by the next load that may write, or by --fix).
    changed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


_FIX: Final = "run `wasmcache verify --fix` (sets it aside in quarantine/; the next load recompiles)"
# Where nothing can be set aside (a read-only mount, chattr +i): what a load does, and where the fix works.
_READ_ONLY_FIX: Final = ("this namespace cannot be written (a read-only mount, chattr +i ...), so nothing can be set "
                         "aside here and every load compiles it in memory; run `wasmcache verify --fix` where the "
                         "root can be written (the image or directory it comes from)")
# --fix could not set it aside in a directory it may write: the file itself refused (or a writer held its key).
_STUCK_FIX: Final = ("it could not be set aside now: the file cannot be moved ({immutable}), or a writer held it; "
                     "then run `wasmcache verify --fix` again")
# Nothing wasmcache did not write is ever moved, collected or cleared (quarantine/ is emptied by gc and
# clear: a user's file moved there would be deleted later).
_FOREIGN_FIX: Final = "not wasmcache's, so it is left alone (verify --fix included); move it out of the cache root"


def verify_root(root: Path, *, fix: bool = False, record_usage: bool = True) -> VerifyReport:
    """Check each namespace against its own recorded fingerprint and each entry against its record.

    A root that does not exist has nothing to verify; a directory that is not ours is refused.
    """
    report = VerifyReport()

    def finding(path: Path, problem: str, detail: str, fix_text: str = _FIX) -> None:
        report.findings.append(Finding(str(path), problem, detail, fix_text))

    def unsafe(path: Path, what: str) -> None:
        """A path others could rewrite: every load refuses it (strict) or compiles without the cache.
        The root as loads open it (through a link to it); nothing inside it through a link."""
        try:
            reason = unsafe_reason(os.stat(path) if path == root else os.lstat(path))
        except OSError:
            return
        if reason is not None:
            finding(path, "unsafe", f"{what} {reason}: loads refuse it", unsafe_fix(path, reason))

    if os.path.lexists(root):
        unsafe(root, "cache root")  # even empty: a load refuses it before writing anything into it
    if not existing_root(root, "fix" if fix else "verify"):
        return report
    for name in (DIGESTS_DIR, ENGINES_DIR):
        if not (root / name).is_symlink():  # never followed (doctor names such a link)
            unsafe(root / name, f"{name}/")

    with os.scandir(root) as it:
        for e in it:
            if e.name in ROOT_FILES or e.name in ROOT_DIRS or is_temp_name(e.name):
                continue
            if is_namespace_name(e.name) and e.is_dir(follow_symlinks=False):
                continue
            if is_namespace_name(e.name) and e.is_symlink():
                finding(Path(e.path), "foreign", "namespace is a symbolic link: never followed (loads compile what "
                        "it would hold, nothing is written through it)", "move the link out of the cache root")
                continue
            detail = "namespace is not a directory" if is_namespace_name(e.name) else "not written by wasmcache"
            finding(Path(e.path), "foreign", detail, _FOREIGN_FIX)
    for namespace in namespaces(root):
        unsafe(namespace.path, "namespace")
        section = namespace.read_section()
        if section is None:
            # A writer killed between a concurrent gc's removal of the engine file and its own
            # re-creation of it leaves entries without it: their engine sections still name the
            # namespace, which is all the file is for. (The next publication restores it.)
            section = _section_from_entries(namespace)
        scan = namespace.scan()
        if section is None and not scan.keys and scan.foreign:  # nothing of ours in it: a directory named like one
            finding(namespace.path, "foreign", "named like a namespace, but holds nothing wasmcache wrote",
                    _FOREIGN_FIX)
        elif section is None and not scan.keys:  # a writer stopped between the directory and its engine file
            finding(namespace.path, "orphan", "an empty namespace a writer left when it stopped",
                    "`wasmcache gc` removes it (the next load here makes it again)")
        elif section is None or namespace_name(fingerprint_of_section(section)) != namespace.name:
            detail = "namespace has no engine record" if section is None else "engine record does not match its name"
            finding(namespace.path, "mismatched", detail, "`wasmcache clear` removes its entries")
            section = None
        for e in scan.foreign:
            finding(Path(e.path), "foreign", "file wasmcache did not write", _FOREIGN_FIX)
        for files in scan.keys:
            # A record without an entry is what a writer killed between writing its record and
            # renaming its entry leaves, like a temp file: harmless, reaped by gc, not a finding.
            if files.entry is None:
                continue
            report.checked += 1
            unsafe(Path(files.entry.path), "entry")
            if _verify_entry(namespace, files.key, section, report, fix=fix):
                report.intact += 1
    if record_usage and os.access(root, os.W_OK) and not disabled_by_environment():  # disabled: touch nothing
        with contextlib.suppress(OSError):
            write_usage(root, *scan_usage(root))  # the usage record is exact after a verify
    return report


def _verify_entry(namespace: Namespace, key: str, section: bytes | None, report: VerifyReport, *,
                  fix: bool) -> bool | None:
    """True: intact; False: a finding (set aside with `fix`); None: not there any more (uncounted)."""
    path = namespace.entry_path(key)
    seen: Identity | None = None
    try:
        checked = namespace.check(key, kind=None, section=section, full=True)
        if checked is None:
            # No record: gc or clear may be removing this very entry right now (they hold its
            # lock, and unlink the entry before the record), or it is gone already. Only an entry
            # still there, with no record, under a free lock is an orphan.
            with namespace.key_free(key) as free:
                if not free or not os.path.lexists(path) or read_record(namespace.record_path(key)) is not None:
                    report.checked -= 1
                    return None
            raise UntrustedEntryError("orphan", "entry without a valid record")
    except UntrustedEntryError as bad:
        fix_text = _FIX if os.access(namespace.path, os.W_OK) else _READ_ONLY_FIX
        seen = bad.seen
        if fix and namespace.quarantine_if_unchanged(key, seen, f"wasmcache verify --fix: {bad.detail}"):
            report.fixed += 1
            fix_text = "done: set aside in quarantine/ (the next load recompiles)"
        elif fix and fix_text is _FIX and os.path.lexists(path):
            fix_text = _STUCK_FIX.format(immutable=immutable_fix(path))
        report.findings.append(Finding(str(path), bad.problem, bad.detail, fix_text))
        return False
    checked.close()
    if checked.record.identity != Identity.of(checked.stat):
        if checked.record.identity is not None:  # None: a publication stopped before its last step, not a change
            report.changed.append(str(path))
        if fix and namespace.rerecord(key, checked):
            report.rerecorded += 1
    return True


def _section_from_entries(namespace: Namespace) -> bytes | None:
    """The engine section of an entry of `namespace` whose fingerprint names it, if any."""
    for entry in sorted(namespace.path.glob(f"*{ENTRY_SUFFIX}")):
        try:
            fd = os.open(entry, READ_FLAGS)
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
