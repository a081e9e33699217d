"""`wasmcache inspect`: what engine made a `.cwasm` file (ours or anyone's), and what we recorded."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

from ._core import (
    ENTRY_SUFFIX,
    NAMESPACE_ENGINE_FILE,
    READ_FLAGS,
    RECORD_SUFFIX,
    digest_fd,
    is_namespace_name,
    read_record,
    read_small_file,
)
from ._elf import ENGINE_SECTION, artifact_kind, find_section
from ._errors import CacheError


def _resolve(target: str, root: Path) -> tuple[Path, bool]:
    """(the file to describe, whether it is a cache entry found by its key)."""
    path = Path(target)
    if not target or os.path.lexists(path) or os.sep in target or target.endswith(ENTRY_SUFFIX):
        return path, False
    if not re.fullmatch(r"[0-9a-fA-F]{4,64}", target):
        raise CacheError(f"{target}: neither a file nor an entry key (4 to 64 hex digits)")
    from ._core import existing_root  # noqa: PLC0415

    matches = sorted(root.glob(f"ns-*/{target.lower()}*{ENTRY_SUFFIX}")) if existing_root(root, "look into") else []
    if not matches:
        raise CacheError(f"{target}: no entry with this key under {root}")
    if len(matches) > 1:
        raise CacheError(f"{target}: ambiguous key prefix ({len(matches)} entries); give more digits")
    return matches[0], True


def inspect_target(target: str, root: Path) -> dict[str, Any]:
    """Describe a `.cwasm` file or an entry key: engine section decoded, kind, size, digest, record."""
    from ._engine_section import decode_engine_section  # noqa: PLC0415

    path, is_entry = _resolve(target, root)
    # An entry is never followed through a symlink; a file the user names is theirs to link. Never
    # blocks on a FIFO (O_NONBLOCK; it is then refused as not a regular file).
    flags = (READ_FLAGS if is_entry else os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise CacheError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CacheError(f"{path}: not a regular file")
        try:
            header = os.pread(fd, 64, 0)
            section = find_section(fd, ENGINE_SECTION)
            digest, size = digest_fd(fd)
        except ValueError as exc:
            raise CacheError(f"{path}: not a Wasmtime compiled file: {exc}") from None
        except OSError as exc:
            raise CacheError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    info: dict[str, Any] = {"path": str(path), "size": size, "content_digest": digest}
    info["kind"] = artifact_kind(header) or "unknown"
    try:
        engine = decode_engine_section(section)
    except ValueError as exc:
        info["engine_error"] = str(exc)
    else:
        info.update(
            wasmtime_version=engine.wasmtime_version, target=engine.target, compiler=engine.compiler,
            opt_level=engine.opt_level, tunables=dict(engine.tunables or {}),
            shared_flags=dict(engine.shared_flags), isa_flags=dict(engine.isa_flags),
        )
    if path.name.endswith(ENTRY_SUFFIX) and is_namespace_name(path.parent.name):
        key = path.name[: -len(ENTRY_SUFFIX)]
        info.update(namespace=path.parent.name, key=key)
        recorded = read_small_file(path.parent / NAMESPACE_ENGINE_FILE, 1 << 20)
        info["matches_namespace"] = None if recorded is None else recorded == section
        found = read_record(path.parent / f"{key}{RECORD_SUFFIX}")
        if found is not None:
            record = found[0]
            info.update(source=record.source, wasm_digest=record.wasm_digest, kind=record.kind,
                        recorded_digest_matches=record.content_digest == digest, origin=record.origin,
                        substituter=record.substituter, level=record.level)
    return info
