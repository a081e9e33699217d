"""One check of an entry, and one way to set a bad one aside: used by loads, `verify` and `push`.

An entry is trusted when the fd we opened (never through a symlink) is a regular file whose
identity equals the one recorded after its publication; otherwise (a copied or restored root,
tampering) only a full check will do: its content's blake3 must equal the record's and its
`.wasmtime.engine` section the namespace's. `verify` and `push` always check in full.

A bad entry is renamed into quarantine under its key's lock, and only if the path still names
the very file that was judged: an entry republished a moment earlier is never set aside.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from typing import TYPE_CHECKING, NamedTuple

import blake3

from ._elf import ENGINE_SECTION, find_section
from ._errors import UntrustedEntryError
from ._fs import READ_FLAGS, digest_fd, read_fd
from ._layout import QUARANTINE_DIR, WHY_SUFFIX, entry_path, lock_path, record_path
from ._lock import KeyLock
from ._record import Identity, Record, read_record

if TYPE_CHECKING:
    from pathlib import Path


class CheckedEntry(NamedTuple):
    """An open, checked entry: map `fd` (the checked inode), then `close()`."""

    fd: int
    stat: os.stat_result
    record: Record
    record_stat: os.stat_result
    content_checked: bool  # the content was hashed (identity differed, or a full check was asked for)
    data: bytearray | None  # the content, when asked for (push, verify)

    def close(self) -> None:
        os.close(self.fd)


def check_entry(
    namespace: Path, key: str, *, kind: str | None, section: bytes | None, full: bool = False,
    keep_data: bool = False,
) -> CheckedEntry | None:
    """The checked entry for `key`; None if nothing is published under it (no record, or no entry).

    Raises UntrustedEntryError (problem, detail, the identity seen) for an entry that must not be
    loaded. `section`: the engine section it must carry (None: not checked).
    """
    found = read_record(record_path(namespace, key))
    if found is None:
        return None
    record, record_stat = found
    if record.key != key or (kind is not None and record.kind != kind):
        raise UntrustedEntryError("mismatched", f"record does not belong to this key ({kind or record.kind})")
    try:
        fd = os.open(entry_path(namespace, key), READ_FLAGS)
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
                entry_section = find_section(data if data is not None else fd, ENGINE_SECTION)
            except (OSError, ValueError) as exc:
                raise UntrustedEntryError("corrupt", f"entry unreadable or not a Wasmtime file: {exc}", seen) from None
            if size != record.size or digest != record.content_digest:
                raise UntrustedEntryError("corrupt", f"entry content does not match its record ({size} bytes, "
                                          f"recorded {record.size}): rewritten or swapped", seen)
            if section is not None and entry_section != section:
                raise UntrustedEntryError("mismatched", "entry was compiled by another engine configuration", seen)
    except BaseException:
        os.close(fd)
        raise
    return CheckedEntry(fd, st, record, record_stat, check, data)


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
            (target_dir / (target.name + WHY_SUFFIX)).write_text(reason + "\n", encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None
    return target


def quarantine_if_unchanged(
    root: Path, namespace: Path, key: str, seen: Identity | None, reason: str, *, lock_held: bool = False
) -> bool:
    """Set the entry of `key` and its record aside if the path still names the file judged (`seen`).

    Takes the key's lock without waiting (unless the caller holds it): whoever holds it is
    compiling, publishing or repairing that key right now, and will leave a good entry. `seen`
    None (the entry could not be opened, or its record is wrong): whatever is there goes.
    Returns whether anything was set aside.
    """
    lock = KeyLock(lock_path(namespace, key))
    if not lock_held and not lock.try_acquire():
        return False
    try:
        entry = entry_path(namespace, key)
        try:
            current: Identity | None = Identity.of(os.stat(entry, follow_symlinks=False))
        except FileNotFoundError:
            current = None
        except OSError:
            return False
        if seen is not None and current is not None and current != seen:
            return False  # republished since it was judged: the new entry is someone else's good work
        if current is not None:
            quarantine(root, entry, reason)
        with contextlib.suppress(OSError):
            os.unlink(record_path(namespace, key))
        return True
    finally:
        lock.release()
