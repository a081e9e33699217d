"""The cache root: where it is, how it proves it is ours, who may write it, and what it holds.

Every path to a root (argument, `--cache-dir`, `$WASMCACHE_DIR`, the platform default) goes
through `resolve_root`, once: the result is absolute, so a later `chdir` cannot move the cache.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Final

from ._errors import ConfigError, NotACacheError
from ._fs import read_small_file, write_atomically
from ._layout import (
    CACHEDIR_TAG_NAME,
    ENGINES_DIR,
    LAYOUT_VERSION,
    MARKER_NAME,
    TEMP_SUFFIX,
    is_temp_name,
    key_of,
)

MARKER_TEXT: Final = f"wasmcache cache root, layout {LAYOUT_VERSION}\n"
CACHEDIR_TAG: Final = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by wasmcache.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)
DEFAULT_MAX_SIZE: Final = 4 << 30

_SIZE_RE: Final = r"(?i)^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$"  # compiled by `re` when a size is parsed
_SIZE_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_ROOT_SETTINGS: Final = "root=, --cache-dir or $WASMCACHE_DIR"


def disabled_by_environment() -> bool:
    """`$WASMCACHE_DISABLE`: compile every time, touch nothing anywhere."""
    if "WASMCACHE_DISABLE" not in os.environ:
        return False  # the common case, without loading the switches' reader
    import _wasmcache_hook  # noqa: PLC0415 - the one reading of the switches' words, beside the package

    return _wasmcache_hook.env_flag(os.environ, "WASMCACHE_DISABLE")


# --- where -----------------------------------------------------------------------------------------


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """The absolute root for `root`, else `$WASMCACHE_DIR`, else the user cache directory."""
    source = "cache root"
    if root is None:
        configured = os.environ.get("WASMCACHE_DIR")
        if configured:
            root, source = configured, "$WASMCACHE_DIR"
        else:
            root = user_cache_dir()
    text = os.fsdecode(os.fspath(root))
    if "\0" in text:
        raise ConfigError(f"{source} {text!r}: a path cannot contain a NUL byte")
    if not text.strip():
        raise ConfigError(f"{source} is empty")
    if text.startswith("~"):
        import _wasmcache_hook  # noqa: PLC0415 - stdlib only, the one home of the rule `exec` follows too

        try:
            text = _wasmcache_hook.expand_user(text)
        except ValueError as exc:
            raise ConfigError(f"{source} {exc}") from None
    # normpath for an absolute path: abspath would also ask for the working directory (this runs in
    # every ModuleCache() of every process).
    return Path(os.path.normpath(text) if os.path.isabs(text) else os.path.abspath(text))


def user_cache_dir() -> str:
    """platformdirs' `user_cache_dir("wasmcache")`; on Linux computed here, as platformdirs does it.

    Importing platformdirs pulls in tempfile, shutil, random, bz2 and lzma: ~8 ms of every
    `wasmcache run` on the default root (measured; issue 10's start-up goal). On Linux the rule is
    the XDG base-directory spec's ($XDG_CACHE_HOME if it is an absolute path, else ~/.cache), and a
    test compares the two answers.
    """
    import _wasmcache_hook  # noqa: PLC0415 - stdlib only: the rule's one home, which `exec` reads too

    found = _wasmcache_hook.xdg_cache_root()
    if found is not None:
        return found
    import platformdirs  # noqa: PLC0415 - elsewhere the rules are platformdirs' to know

    return str(platformdirs.user_cache_dir("wasmcache", appauthor=False))


# --- how big ----------------------------------------------------------------------------------------


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
    match = re.match(_SIZE_RE, value)
    if match is None:
        raise ConfigError(f"size {value!r}: expected bytes or a number with K, M, G or T (512M, 2G)")
    number, unit, _ = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def resolve_max_size(max_size: int | str | None) -> int:
    """`max_size` if given (the environment is then not consulted), else `$WASMCACHE_MAX_SIZE`, else 4 GiB."""
    if max_size is not None:
        return parse_size(max_size)
    configured = os.environ.get("WASMCACHE_MAX_SIZE")
    if not configured:
        return DEFAULT_MAX_SIZE
    try:
        return parse_size(configured)
    except ConfigError as exc:
        raise ConfigError(f"$WASMCACHE_MAX_SIZE: {exc}") from None


# --- who may write it ------------------------------------------------------------------------------


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
    """What to do about an unsafe cache path: change it only if it is wasmcache's (a root with our marker,
    a namespace or an entry in one) or a new, empty directory of this user's; never `chmod /tmp`."""
    if not _ours_to_fix(path):
        return f"it is not a cache root of yours: choose a directory of your own ({_ROOT_SETTINGS})"
    if "world-writable" in reason:
        return f"chmod o-w {path}"
    return f"chown $(id -u) {path}, or use a cache directory of your own"


def _ours_to_fix(path: Path) -> bool:
    if any(has_marker(place) for place in (path, path.parent, path.parent.parent)):
        return True
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_ISVTX or st.st_uid != os.getuid():
        return False  # (sticky: a shared directory such as /tmp or /dev/shm)
    return _empty_directory(path)


# --- how it proves it is ours -----------------------------------------------------------------------


def _read_marker(root: Path) -> str:
    """The marker's text, or "" (every ModuleCache() in every process reads it)."""
    raw = read_small_file(f"{root}/{MARKER_NAME}", 256)
    return raw.decode("utf-8", "replace") if raw else ""


def has_marker(root: Path) -> bool:
    return _read_marker(root).startswith("wasmcache")


def _check_layout(root: Path, marker: str) -> None:
    match = re.search(r"layout (\d+)", marker)
    if match is None or int(match.group(1)) != LAYOUT_VERSION:
        raise NotACacheError(
            f"{root}: written by another wasmcache layout ({marker.strip()!r}); this version reads layout "
            f"{LAYOUT_VERSION}. Use another cache root ({_ROOT_SETTINGS})."
        )


def not_a_root_message(root: Path) -> str:
    """The one-line verdict on a directory that exists and is not a wasmcache root."""
    if not root.is_dir():
        return f"{root}: not a directory, so not a wasmcache cache root; check the cache root ({_ROOT_SETTINGS})"
    if os.path.lexists(root / MARKER_NAME):
        return (f"{root}: not a wasmcache cache root (its {MARKER_NAME} was not written by wasmcache); check the "
                f"cache root ({_ROOT_SETTINGS})")
    return f"{root}: not a wasmcache cache root (no {MARKER_NAME} file); check the cache root ({_ROOT_SETTINGS})"


def existing_root(root: Path, action: str) -> bool:
    """Whether `root` is one of our roots (False: nothing is there yet, or an empty directory, which a load
    would adopt: both read as an empty cache).

    Anything else is refused before `action` (clear, collect, fix, verify ...), in one line: a file, a
    directory that is not ours, and a root that cannot be reached (a file or a directory we may not
    enter on its way), which a listing must not take for an empty cache.
    """
    unreachable = unreachable_reason(root)
    if unreachable is not None:
        raise NotACacheError(f"{root}: cannot be reached ({unreachable}); check the cache root ({_ROOT_SETTINGS}); "
                             f"refusing to {action} it")
    if not os.path.lexists(root) or (os.path.isdir(root) and _empty_directory(root)):
        return False
    marker = _read_marker(root)
    if not marker.startswith("wasmcache"):
        raise NotACacheError(f"{not_a_root_message(root)}; refusing to {action} it")
    _check_layout(root, marker)
    return True


def unreachable_reason(root: Path) -> str | None:
    """Why nothing can ever be at `root`, in a few words, or None (it is there, or merely not created yet):
    what looking it up says (Not a directory, a loop, a name too long, no permission), or the link to nothing
    a missing root lies under (`~/.cache` -> an unmounted disk), which mkdir would report as "File exists"."""
    try:
        os.lstat(root)
    except FileNotFoundError:
        return _dangling_link_above(root)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _empty_directory(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError:
        return False


def _dangling_link_above(path: Path) -> str | None:
    above = next((p for p in path.parents if os.path.lexists(p)), None)
    if above is None or not os.path.islink(above) or os.path.exists(above):
        return None
    try:
        return f"{above} is a symbolic link to {os.readlink(above)}, which does not exist"
    except OSError:
        return None


def _ours_while_initializing(name: str) -> bool:
    """The markers, and the temp files of a process writing them (`<stem>.<random>.tmp`)."""
    if name in (MARKER_NAME, CACHEDIR_TAG_NAME):
        return True
    return name.endswith(TEMP_SUFFIX) and key_of(name) in (MARKER_NAME, key_of(CACHEDIR_TAG_NAME))


_MEMO_RE: Final = r"^[0-9a-f]{32}\.engine$"


def _memos_of_old_versions(entry: os.DirEntry[str]) -> bool:
    """`engines/` holding only engine memos: what wasmcache 0.1 wrote into the default root before
    creating it (issue 8, item 1); it is ours, so such a root is completed, not refused."""
    if entry.name != ENGINES_DIR or not entry.is_dir(follow_symlinks=False):
        return False
    try:
        with os.scandir(entry.path) as it:
            return all(e.is_file(follow_symlinks=False) and (re.match(_MEMO_RE, e.name) or is_temp_name(e.name))
                       for e in it)
    except OSError:
        return False


def initialize_root(root: Path) -> None:
    """Create `root` (private) with its markers; an existing non-empty foreign directory is refused."""
    marker = _read_marker(root)
    if marker.startswith("wasmcache"):
        if f"layout {LAYOUT_VERSION}\n" not in marker:
            _check_layout(root, marker)  # raises, naming the layout found
        return
    if os.path.lexists(root) and not root.is_dir():
        raise NotACacheError(f"{root}: exists and is not a directory; choose a new or empty directory as the "
                             f"cache root ({_ROOT_SETTINGS})")
    if os.path.lexists(root / MARKER_NAME):
        if _read_marker(root).startswith("wasmcache"):
            return  # another process completed this root a moment ago
        raise NotACacheError(f"{not_a_root_message(root)}; refusing to use it")  # garbage, empty, a directory ...
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    with os.scandir(root) as it:
        foreign = [e.name for e in it if not _ours_while_initializing(e.name) and not _memos_of_old_versions(e)]
    # Another process may be initializing the same new root right now: once its marker exists,
    # whatever else it has written is ours too (8 processes starting on a new root raced here).
    if foreign and not _read_marker(root).startswith("wasmcache"):
        raise NotACacheError(
            f"{root}: exists, is not empty and is not a wasmcache root (no {MARKER_NAME} file); "
            "refusing to use it, so that clear or gc can never delete files that are not ours. "
            f"Choose a new or empty directory as the cache root ({_ROOT_SETTINGS})."
        )
    write_atomically(root / CACHEDIR_TAG_NAME, CACHEDIR_TAG.encode(), mode=0o644)
    # The marker last: a root is ours only once it is complete.
    write_atomically(root / MARKER_NAME, MARKER_TEXT.encode(), mode=0o644, durable=True)
