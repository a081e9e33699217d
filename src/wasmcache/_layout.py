"""Where things live under a cache root, and how the root proves it is ours.

    ROOT/
      CACHEDIR.TAG                 backup tools skip the root (https://bford.info/cachedir/)
      wasmcache-layout             our marker: clear/gc/verify --fix refuse a directory without it
      usage                        approximate total size, so the size bound needs no scan per load
      gc.lock                      one collector at a time
      engines/<memo>.json          validated EngineSettings and their fingerprints
      digests/<id>                 wasm digest by file identity (device, inode, size, mtime, ctime)
      quarantine/<key>.<ns>.<t>    bad entries moved aside (neither .cwasm nor .tmp)
      ns-<fingerprint[:32]>/       one namespace per engine configuration
        engine                     that engine's .wasmtime.engine section (what verify checks against)
        <key>.cwasm                an entry: read-only, published by rename, never written again
        <key>.rec                  its record: identity after publish + content digest (JSON)
        <key>.lock                 held while a process compiles, publishes or evicts that key
        <key>.<random>.tmp         a writer's temp file (the writer holds <key>.lock)
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Final

import blake3

from ._errors import ConfigError, NotACacheError

LAYOUT_VERSION: Final = 1
MARKER_NAME: Final = "wasmcache-layout"
MARKER_TEXT: Final = f"wasmcache cache root, layout {LAYOUT_VERSION}\n"
CACHEDIR_TAG: Final = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by wasmcache.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)
NAMESPACE_PREFIX: Final = "ns-"
ENTRY_SUFFIX: Final = ".cwasm"
RECORD_SUFFIX: Final = ".rec"
LOCK_SUFFIX: Final = ".lock"
TEMP_SUFFIX: Final = ".tmp"
NAMESPACE_ENGINE_FILE: Final = "engine"
KINDS: Final = ("module", "component")

DEFAULT_MAX_SIZE: Final = 4 << 30
KEY_RE: Final = re.compile(r"^[0-9a-f]{64}$")

_SIZE_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as ``"512M"``, ``"2G"``, ``"1.5GiB"`` or ``"1000"``."""
    if isinstance(value, bool):
        raise ConfigError(f"size {value!r}: expected bytes or a string like 512M or 2G")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"size {value}: must not be negative")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"size {value!r}: expected bytes or a string like 512M or 2G")
    match = _SIZE_RE.match(value)
    if match is None:
        raise ConfigError(f"size {value!r}: expected bytes or a number with K, M, G or T (512M, 2G)")
    number, unit, _ = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def unsafe_reason(st: os.stat_result) -> str | None:
    """Why a cache path could be rewritten by someone else, or None (like OpenSSH StrictModes).

    A world-writable root, namespace or entry, or one owned by another user (root excepted), lets
    that user plant native code which this process would map and run.
    """
    if st.st_mode & stat.S_IWOTH and not stat.S_ISLNK(st.st_mode):
        return "is world-writable"
    getuid = getattr(os, "getuid", None)
    if getuid is not None and st.st_uid not in (getuid(), 0):
        return f"is owned by another user (uid {st.st_uid})"
    return None


def unsafe_fix(path: Path, reason: str) -> str:
    if "world-writable" in reason:
        return f"chmod o-w {path}"
    return f"chown $(id -u) {path}, or use a cache directory of your own"


def default_root() -> Path:
    """`$WASMCACHE_DIR`, else the platform's user cache directory for wasmcache."""
    configured = os.environ.get("WASMCACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    import platformdirs  # noqa: PLC0415 - only when no root was given

    return Path(platformdirs.user_cache_dir("wasmcache", appauthor=False))


def default_max_size() -> int:
    configured = os.environ.get("WASMCACHE_MAX_SIZE")
    if not configured:
        return DEFAULT_MAX_SIZE
    try:
        return parse_size(configured)
    except ConfigError as exc:
        raise ConfigError(f"$WASMCACHE_MAX_SIZE: {exc}") from None


def cache_key(fingerprint: str, kind: str, wasm_digest: str) -> str:
    """The entry key: engine fingerprint, module|component and the wasm's digest, hashed."""
    return blake3.blake3(f"wasmcache-key-v1\0{fingerprint}\0{kind}\0{wasm_digest}".encode()).hexdigest()


def namespace_name(fingerprint: str) -> str:
    return NAMESPACE_PREFIX + fingerprint[:32]


def _read_marker(root: Path) -> str:
    """The marker's text, or "" (os-level: every ModuleCache() in every process reads it)."""
    try:
        fd = os.open(f"{root}/{MARKER_NAME}", os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return ""
    try:
        return os.read(fd, 256).decode("utf-8", "replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def has_marker(root: Path) -> bool:
    return _read_marker(root).startswith("wasmcache")


def check_marker_version(root: Path) -> None:
    text = (root / MARKER_NAME).read_text(encoding="utf-8", errors="replace")
    match = re.search(r"layout (\d+)", text)
    if match is None or int(match.group(1)) != LAYOUT_VERSION:
        raise NotACacheError(
            f"{root}: written by another wasmcache layout ({text.strip()!r}); this version reads layout "
            f"{LAYOUT_VERSION}. Use another --cache-dir, or remove that directory by hand."
        )


def require_marker(root: Path, action: str) -> None:
    """Refuse to `action` (clear, gc, fix) a directory that is not one of our roots."""
    if not has_marker(root):
        raise NotACacheError(
            f"{root}: not a wasmcache cache root (no {MARKER_NAME} file), refusing to {action} it. "
            "Check --cache-dir / $WASMCACHE_DIR."
        )
    check_marker_version(root)


def _ours_while_initializing(name: str) -> bool:
    """The markers, and the temp files of a process writing them (`<stem>.<random>.tmp`)."""
    if name in (MARKER_NAME, "CACHEDIR.TAG"):
        return True
    stem = name.split(".", 1)[0]
    return name.endswith(".tmp") and stem in (MARKER_NAME, "CACHEDIR")


def initialize_root(root: Path) -> None:
    """Create `root` (private) with its markers; an existing non-empty foreign directory is refused."""
    marker = _read_marker(root)
    if marker.startswith("wasmcache"):
        if f"layout {LAYOUT_VERSION}\n" not in marker:
            check_marker_version(root)  # raises, naming the layout found
        return
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    with os.scandir(root) as it:
        foreign = [e.name for e in it if not _ours_while_initializing(e.name)]
    # Another process may be initializing the same new root right now: once its marker exists,
    # whatever else it has written is ours too (8 processes starting on a new root raced here).
    if foreign and not _read_marker(root).startswith("wasmcache"):
        raise NotACacheError(
            f"{root}: exists, is not empty and is not a wasmcache root (no {MARKER_NAME} file); "
            "refusing to use it, so that clear or gc can never delete files that are not ours. "
            "Point --cache-dir / $WASMCACHE_DIR at a new or empty directory."
        )
    from ._store import write_small_file_atomically  # noqa: PLC0415 - avoid an import cycle

    write_small_file_atomically(root / "CACHEDIR.TAG", CACHEDIR_TAG.encode())
    # The marker last: a root is ours only once it is complete.
    write_small_file_atomically(root / MARKER_NAME, MARKER_TEXT.encode())
