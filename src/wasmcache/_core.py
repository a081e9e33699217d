"""The core every load runs, in one module: where things live, how files are written and read, entry
records, the logger, the per-process memo of modules, wasmtime's own calls, engine fingerprints, the root,
storage (`Namespace`), keys and the context a cache and its miss path share.

These were eleven modules, one per topic; they are one because a process pays for each module it imports
whatever its size (the import system's own work, ~0.1 ms apiece here), and every process that loads a module
imported all eleven: 1.1 ms of a library hit's whole process, more than the hit itself (issue 14, item 7:
measured with `make bench`'s `guest` figure). The topics stay apart as the sections below, in dependency
order, each under the text that introduced its module. What is not on every load's path (the miss path,
maintenance, verify, the drop-in, the tiers, the CLI) keeps its own modules.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
import time
from _thread import allocate_lock
from _weakref import ref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ._errors import CacheError, ConfigError, EngineCannotCompileError, NotACacheError, SourceError, UnsafeCacheError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from typing import Literal, TypeAlias

    import wasmtime

    from ._engine import EngineSettings
    from ._lock import KeyLock

    # Names for type checkers only: subscripting `Literal` costs every process that loads a module ~0.1 ms.
    Kind: TypeAlias = Literal["module", "component"]
    Mode: TypeAlias = Literal["mmap", "memory"]
    Source: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview


# ==================== layout =========================================================================================
#
# Where things live under a cache root: every name of the layout, and nothing else.
#
#     ROOT/
#       CACHEDIR.TAG                 backup tools skip the root (https://bford.info/cachedir/)
#       wasmcache-layout             our marker: clear/gc/verify --fix refuse a directory without it
#       usage                        "<entries> <bytes>" of the whole root, so stats() and the size
#                                    bound need no scan (exact after gc/verify, approximate between)
#       gc.lock                      one collector at a time
#       events, events.1             what the drop-in did: a line per process that it served (at exit)
#       engines/<memo>.engine        validated engine settings, their engine sections and fingerprints
#       digests/<memo>               a file's digest by its identity (device, inode, size, mtime, ctime),
#                                    and the key made of a digest for an engine (a hit hashes nothing)
#       quarantine/<key>.<ns>.<t>    bad entries moved aside (neither .cwasm nor .tmp)
#       substituters/                each substituter's trusted TUF metadata (rollback protection; kept by
#                                    clear) and brief memories of a host that is down or has no artifact
#       ns-<fingerprint[:32]>/       one namespace per engine configuration
#         engine                     that engine's .wasmtime.engine section (what verify checks against)
#         <key>.cwasm                an entry: read-only, published by rename, never written again
#         <key>.rec                  its record: identity after publish + content digest (JSON)
#         <key>.lock                 held while a process compiles, publishes or evicts that key
#         <key>.<random>.tmp         a writer's temp file (the writer holds an flock on it)
#

LAYOUT_VERSION: Final = 1
MARKER_NAME: Final = "wasmcache-layout"
CACHEDIR_TAG_NAME: Final = "CACHEDIR.TAG"
USAGE_NAME: Final = "usage"
GC_LOCK_NAME: Final = "gc.lock"
EVENTS_NAME: Final = "events"
EVENTS_OLD_NAME: Final = "events.1"
ENGINES_DIR: Final = "engines"
DIGESTS_DIR: Final = "digests"
QUARANTINE_DIR: Final = "quarantine"
SUBSTITUTERS_DIR: Final = "substituters"
ROOT_FILES: Final = frozenset({MARKER_NAME, CACHEDIR_TAG_NAME, USAGE_NAME, GC_LOCK_NAME, EVENTS_NAME, EVENTS_OLD_NAME})
ROOT_DIRS: Final = frozenset({ENGINES_DIR, DIGESTS_DIR, QUARANTINE_DIR, SUBSTITUTERS_DIR})

NAMESPACE_PREFIX: Final = "ns-"
NAMESPACE_ENGINE_FILE: Final = "engine"
ENTRY_SUFFIX: Final = ".cwasm"
RECORD_SUFFIX: Final = ".rec"
LOCK_SUFFIX: Final = ".lock"
TEMP_SUFFIX: Final = ".tmp"
MEMO_SUFFIX: Final = ".engine"
WHY_SUFFIX: Final = ".why"
KINDS: Final = ("module", "component")
_HEX: Final = "0123456789abcdef"
# What wasmcache itself writes, exactly: nothing else in a root is ever collected, cleared or reaped.
# Patterns, compiled by `re` on first use (and cached there): a hit needs none of them, and each
# compile costs every process ~0.1 ms at import.
_NAMESPACE_RE: Final = r"^ns-[0-9a-f]{32}$"
# <stem>.<12 hex>.tmp (`temp_path_for`), the stem of a file wasmcache writes through one: a key (entry, record),
# a memo (32 hex), a namespace's engine file, the root's usage, marker and CACHEDIR.TAG. (A user's `my.<hex>.tmp`
# is not one: gc never reaps it.)
_TEMP_RE: Final = r"^([0-9a-f]{64}|[0-9a-f]{32}|engine|usage|wasmcache-layout|CACHEDIR)\.[0-9a-f]{12}\.tmp$"
_KEYED_RE: Final = r"^[0-9a-f]{64}(\.cwasm|\.rec|\.lock|\.[0-9a-f]{12}\.tmp)$"


def is_key(text: str) -> bool:
    """64 lowercase hex digits: a key, or a blake3 digest (no regular expression: a hit reads three of them)."""
    return len(text) == 64 and not text.strip(_HEX)


def namespace_name(fingerprint: str) -> str:
    return NAMESPACE_PREFIX + fingerprint[:32]


def is_namespace_name(name: str) -> bool:
    return re.match(_NAMESPACE_RE, name) is not None


def is_temp_name(name: str) -> bool:
    """A writer's temp file: `<stem>.<12 hex>.tmp`, as `temp_path_for` names them."""
    return re.match(_TEMP_RE, name) is not None


# What a memo of ROOT/digests/ remembers, the text before its first ':' (see `SourceDigests`): a file's identity
# (a wasm, or a serialized artifact) or a key made of a digest (`cache_key`, `snapshot_key`).
DIGEST_MEMO_KINDS: Final = (b"wasm", b"artifact", b"cache_key", b"snapshot_key")


def is_memo_name(directory: str, name: str) -> bool:
    """The name of a memo wasmcache writes in ROOT/digests/ (32 hex digits, see `memo_file_name`) or ROOT/engines/
    (the same, `.engine`). Nothing else there is collected or cleared (a writer's temp file is reaped by its lock)."""
    stem = name
    if directory == ENGINES_DIR:
        if not name.endswith(MEMO_SUFFIX):
            return False
        stem = name[: -len(MEMO_SUFFIX)]
    return len(stem) == 32 and not stem.strip(_HEX)


def is_entry_name(name: str) -> bool:
    return len(name) == 64 + len(ENTRY_SUFFIX) and name.endswith(ENTRY_SUFFIX) and is_key(name[:64])


def is_keyed_name(name: str) -> bool:
    """A file of one key in a namespace: its entry, record, lock or a writer's temp file."""
    return re.match(_KEYED_RE, name) is not None


def key_of(name: str) -> str:
    """The key a namespace file belongs to (`<key>.cwasm`, `<key>.rec`, `<key>.<random>.tmp` ...)."""
    return name.split(".", 1)[0]


def entry_path(namespace: Path, key: str) -> Path:
    return namespace / f"{key}{ENTRY_SUFFIX}"


def record_path(namespace: Path, key: str) -> Path:
    return namespace / f"{key}{RECORD_SUFFIX}"


def lock_path(namespace: Path, key: str) -> Path:
    return namespace / f"{key}{LOCK_SUFFIX}"


# ==================== fs =============================================================================================
#
# How bytes reach the disk and come back: the one temp-file-then-rename writer and the readers.
#
# The rules (storage guarantees 2 and 3 of the README):
# - a file is written under a temp name created exclusively in the same directory, fsynced (when it
#   must survive power loss), renamed into place, and the directory is fsynced: no reader ever sees
#   a partial file;
# - an existing file is never opened for writing or truncated: it is replaced by rename, so a
#   process that has the old one mapped keeps its inode and keeps running;
# - nothing is followed through symlinks (O_NOFOLLOW);
# - the writer holds an flock on its temp file until the rename, so a collector tells a dead
#   writer's leftover (lock free: reap it) from a live one's (held: leave it), whatever its age.
#

O_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: a FIFO put where a file of ours belongs must not hang the open (for a regular file it changes
# nothing); every reader then checks it opened a regular file.
READ_FLAGS: Final = os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)
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


# A memo a hit reads is marked used (its mtime, which gc's retention goes by) at most this often.
MEMO_TOUCH_INTERVAL: Final = 24 * 3600.0


def read_small_file(path: Path | str, limit: int = 1 << 16, *, trusted: bool = False,
                    mark_used: bool = False) -> bytes | None:
    """Up to `limit` bytes of a small file in one read (never through a symlink), or None.

    os-level on purpose: markers, memos and records are read on every hit, in every process.
    `trusted`: only a file nobody else could have written (a memo decides which entry a load maps).
    `mark_used`: a memo of a writable root, its mtime set to now if older than MEMO_TOUCH_INTERVAL.
    """
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (trusted and unsafe_reason(st) is not None):
            return None
        data = os.read(fd, limit)
    except OSError:
        return None
    else:
        if mark_used and time.time() - st.st_mtime > MEMO_TOUCH_INTERVAL:
            with contextlib.suppress(OSError):
                os.utime(fd)
        return data
    finally:
        os.close(fd)


def reap_if_dead(temp: str | Path, *, dry_run: bool = False) -> bool:
    """Unlink temp file `temp` if no writer holds its flock (see `write_atomically`); with `dry_run`,
    only say whether it would (doctor's question, answered by gc's own test)."""
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
        if not dry_run:
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


def blake3_hasher() -> Any:
    """`blake3.blake3`, imported at its first use: a hit by path hashes nothing (what it needs is
    remembered: the input's digest, the engine's fingerprint, the key), and `import blake3` costs a hit
    process ~0.5 ms, and ~0.2 ms more at its exit (issue 14, item 7)."""
    global _blake3  # noqa: PLW0603 - imported once per process
    if _blake3 is None:
        try:
            from blake3 import blake3  # noqa: PLC0415
        except ImportError as exc:  # a declared dependency: only a broken installation lacks it
            shadow = getattr(exc, "path", None)
            if shadow and not isinstance(exc, ModuleNotFoundError):  # a blake3.py of the program's own
                raise CacheError(f"cannot hash: {shadow} shadows blake3, the hash library wasmcache imports; "
                                 "rename it") from None
            raise CacheError(f"cannot hash: blake3 does not import in {sys.executable} ({exc}); "
                             f"fix: {sys.executable} -m pip install blake3") from None
        _blake3 = blake3
    return _blake3


_blake3: Any = None


def require_blake3() -> None:
    """Raise what `import blake3` would raise in this Python, without importing it: the drop-in asks at its
    activation, so a guest in a Python that lacks blake3 is told how to enable it there and then (by the
    startup hook) rather than failing at its first miss."""
    if "blake3" in sys.modules:
        if sys.modules["blake3"] is None:
            raise ModuleNotFoundError("import of blake3 halted; None in sys.modules", name="blake3")
        return
    if os.path.isfile(os.path.join(os.path.dirname(os.path.dirname(__file__)), "blake3", "__init__.py")):
        return  # installed beside wasmcache, as pip puts it: one stat (asking every finder costs ~0.1 ms)
    for finder in sys.meta_path:  # what an import asks, in its order, short of loading the module
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is not None and find_spec("blake3", None) is not None:
            return
    raise ModuleNotFoundError("No module named 'blake3'", name="blake3")
# The largest prime below 2**128: a memo's file name is its text, as a number, modulo this prime.
_NAME_MODULUS: Final = (1 << 128) - 159


def memo_file_name(text: str) -> str:
    """32 hex digits naming the memo file of `text` (what is remembered, spelled out), without a hash
    library: a memo holds its whole `text` and is believed only when that matches, so two texts with
    one name cost a recomputation, never one's value for the other's (see `SourceDigests`, `EngineMemo`)."""
    return f"{int.from_bytes(text.encode(), 'little') % _NAME_MODULUS:032x}"


def digest_fd(fd: int) -> tuple[str, int]:
    """blake3 of the whole file behind `fd` and its length, read in chunks (never mapped)."""
    blake3 = blake3_hasher()
    hasher = blake3(max_threads=blake3.AUTO)
    buffer = bytearray(_READ_CHUNK)
    view = memoryview(buffer)
    total = 0
    while True:
        n = os.preadv(fd, [view], total)
        if n == 0:
            return hasher.hexdigest(), total
        hasher.update(view[:n])
        total += n


# ==================== record =========================================================================================
#
# Entry records: what was published under a key (`<key>.rec`, JSON next to the entry).
#
# A record holds the entry's identity as stat'ed after the final rename and the blake3 of its
# content. An entry whose open fd has that identity is the very file that was published; any other
# entry must prove itself by content (see `Namespace.check`).
#

RECORD_VERSION: Final = 1
_MAX_RECORD: Final = 64 << 10
ORIGINS: Final = ("compiled", "snapshot", "remote", "substituted")


class _ScannerContext:
    """What json's C scanner reads from a `json.JSONDecoder`: the defaults, and no NaN or Infinity."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> Any:
        raise ValueError(f"record holds {name}")


_scan: Any = None


def _loads(raw: bytes) -> Any:
    """`json.loads` of a record, through the C scanner json.loads itself uses (`_json.make_scanner`).

    Hand-written because of a measured cost: a hit reads one record, and `import json` costs a hit
    process ~1.8 ms (its package imports the encoder too and compiles six regular expressions),
    a sixth of what wasmcache may add to the process (issue 14, item 7). The same parser, the same
    errors (ValueError); json itself where `_json` is missing (not CPython).
    """
    global _scan  # noqa: PLW0603 - made once per process
    text = raw.decode("utf-8")
    plain = _plain_json(text)
    if plain is not None:
        return plain
    if _scan is None:
        try:
            from _json import make_scanner  # noqa: PLC0415

            _scan = make_scanner(_ScannerContext())  # type: ignore[arg-type]  # duck-typed, as JSONDecoder
        except ImportError:
            import json  # noqa: PLC0415

            _scan = json.JSONDecoder(parse_constant=_ScannerContext.parse_constant).scan_once  # type: ignore[attr-defined]
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = _scan(text, start)
    except StopIteration as exc:
        raise ValueError(f"record is not JSON (at character {exc.value})") from None
    if text[end:].strip(" \t\n\r"):
        raise ValueError(f"record is not JSON (extra data at character {end})")
    return value


_LITERALS: Final = {"null": None, "true": True, "false": False}


def _plain_json(text: str) -> Any:
    """A record as `Record.to_json` writes it (json.dumps: ASCII, `", "` and `": "` between its parts, no
    escapes, no arrays) parsed without `_json`, whose import (an extension module) costs a hit process
    ~0.2 ms (issue 14, item 7); None for anything else, which the real parser reads (or refuses).

    Hand-written because of that measured cost, and kept to a strict subset of JSON: what it accepts,
    json.loads reads as the same value (tests/test_hit_memos.py compares the two on damaged records).
    """
    if not (text.isascii() and text.isprintable()) or "\\" in text or "[" in text:
        return None
    try:
        value, end = _plain_value(text, 0)
    except (ValueError, IndexError, RecursionError):
        return None
    return value if end == len(text) else None


def _plain_value(text: str, i: int) -> tuple[Any, int]:
    """The value at `text[i:]` and where it ends; ValueError for what `_plain_json` leaves to json."""
    if text.startswith('"', i):
        end = text.index('"', i + 1)  # no escapes: the next quote closes the string
        return text[i + 1:end], end + 1
    if text.startswith("{", i):
        found: dict[str, Any] = {}
        i += 1
        if text.startswith("}", i):
            return found, i + 1
        while True:
            if not text.startswith('"', i):
                raise ValueError(i)
            name, i = _plain_value(text, i)
            if not text.startswith(": ", i):
                raise ValueError(i)
            found[name], i = _plain_value(text, i + 2)
            if text.startswith(", ", i):
                i += 2
            elif text.startswith("}", i):
                return found, i + 1
            else:
                raise ValueError(i)
    ends = [end for end in (text.find(",", i), text.find("}", i)) if end >= 0]
    end = min(ends) if ends else len(text)
    token = text[i:end]
    if token in _LITERALS:
        return _LITERALS[token], end
    mantissa, exp, exponent = token.removeprefix("-").lower().partition("e")
    whole, dot, fraction = mantissa.partition(".")
    digits = exponent[1:] if exponent[:1] in ("+", "-") else exponent
    if (not whole.isdigit() or (whole.startswith("0") and whole != "0") or (dot and not fraction.isdigit())
            or (exp and not digits.isdigit())):
        raise ValueError(token)
    return (float(token) if dot or exp else int(token)), end


# Identity and Record are written out, not NamedTuples (nor dataclasses, whose import costs ~5 ms):
# building a NamedTuple class costs every process that loads a module ~0.15-0.25 ms, and a hit needs
# both (measured in a fresh process after `import wasmtime`: issue 14, item 7).
class Identity(tuple[int, int, int, int, int]):
    """What a stat says about a file; equal identities mean the very file that was published.

    A tuple of (dev, ino, size, mtime_ns, ctime_ns): compared and hashed as one.
    """

    __slots__ = ()
    FIELDS: Final = ("dev", "ino", "size", "mtime_ns", "ctime_ns")

    def __new__(cls, dev: int, ino: int, size: int, mtime_ns: int, ctime_ns: int) -> Identity:  # noqa: PYI034 - final
        return tuple.__new__(cls, (dev, ino, size, mtime_ns, ctime_ns))

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    @property
    def dev(self) -> int:
        return self[0]

    @property
    def ino(self) -> int:
        return self[1]

    @property
    def size(self) -> int:
        return self[2]

    @property
    def mtime_ns(self) -> int:
        return self[3]

    @property
    def ctime_ns(self) -> int:
        return self[4]

    def _asdict(self) -> dict[str, int]:
        return dict(zip(self.FIELDS, self, strict=True))

    def __getnewargs__(self) -> tuple[int, int, int, int, int]:  # copy and pickle, as a NamedTuple's
        return (self[0], self[1], self[2], self[3], self[4])

    def __repr__(self) -> str:
        return "Identity(" + ", ".join(f"{name}={value}" for name, value in zip(self.FIELDS, self, strict=True)) + ")"


class Record:
    """What was published under a key."""

    __slots__ = ("content_digest", "created", "identity", "key", "kind", "level", "origin", "size", "source",
                 "substituter", "wasm_digest", "wasmtime_version")

    def __init__(self, *, key: str, kind: str, wasm_digest: str, content_digest: str, size: int,
                 identity: Identity | None, source: str, wasmtime_version: str, created: float,
                 origin: str = "compiled", substituter: str | None = None, level: str | None = None) -> None:
        self.key = key
        self.kind = kind
        self.wasm_digest = wasm_digest  # of the input: the wasm, or (origin "snapshot") the serialized file taken in
        self.content_digest = content_digest
        self.size = size
        self.identity = identity  # None until the entry has been renamed into place
        self.source = source
        self.wasmtime_version = wasmtime_version
        self.created = created
        self.origin = origin  # compiled here | snapshot of a program's own .cwasm | remote tier | substituter
        self.substituter = substituter  # origin "substituted": the URL it came from
        self.level = level  # origin "substituted": the CPU level it was compiled for ("x86-64-v3" ...)

    def _asdict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def _replace(self, **changes: Any) -> Record:
        return Record(**(self._asdict() | changes))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Record) and self._asdict() == other._asdict()

    __hash__ = None  # type: ignore[assignment]  # mutable slots: not a key

    def __repr__(self) -> str:
        return "Record(" + ", ".join(f"{name}={value!r}" for name, value in self._asdict().items()) + ")"

    def to_json(self) -> bytes:
        fields: dict[str, Any] = self._asdict()
        fields["identity"] = self.identity._asdict() if self.identity is not None else None
        fields["version"] = RECORD_VERSION
        import json  # noqa: PLC0415 - written on a miss only (see _loads)

        return json.dumps(fields, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Record:
        """Parse a record; anything malformed raises ValueError (records are files we did not lock)."""
        try:
            fields = _loads(raw)
        except (UnicodeDecodeError, RecursionError) as exc:
            raise ValueError(f"record is not JSON: {exc}") from None
        if not isinstance(fields, dict) or fields.get("version") != RECORD_VERSION:
            raise ValueError("record has no supported version")

        def text(name: str, default: str | None = None, *, key: bool = False) -> str:
            value = fields.get(name, default)
            if not isinstance(value, str) or (key and not is_key(value)):
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
        origin = text("origin", "compiled")
        if origin not in ORIGINS:
            raise ValueError("record field origin is malformed")
        created = fields.get("created")
        if not isinstance(created, (int, float)) or isinstance(created, bool):
            raise ValueError("record field created is malformed")  # noqa: TRY004 - bad data, not a caller's type
        extras = {name: fields.get(name) for name in ("substituter", "level")}
        if any(value is not None and (not isinstance(value, str) or len(value) > 2048) for value in extras.values()):
            raise ValueError("record field substituter or level is malformed")
        return cls(
            key=text("key", key=True),
            kind=kind,
            wasm_digest=text("wasm_digest", key=True),
            content_digest=text("content_digest", key=True),
            size=number("size"),
            identity=identity,
            source=text("source"),
            wasmtime_version=text("wasmtime_version"),
            created=float(created),
            origin=origin,
            **extras,
        )


def read_record(path: Path) -> tuple[Record, os.stat_result] | None:
    """The record at `path` and its stat (its mtime is the entry's last use), or None if absent/bad."""
    try:
        fd = os.open(path, READ_FLAGS)
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
    write_atomically(path, record.to_json(), mode=0o644, durable=True)


# ==================== log ============================================================================================
#
# The library's logger, `logging.getLogger("wasmcache")`, without importing `logging` until it matters.
#
# `import logging` costs ~4 ms, paid by every process that loads a module, and `wasmtime` does not
# import it. While nothing in the process has imported `logging`, nothing has configured it either:
# a debug or info record could reach no handler (the last-resort handler prints warnings and up),
# so such calls return at once; a warning imports `logging` and goes through the real logger.
# Measured cost this saves: ~4 ms per `wasmcache run` hit (issue 10's start-up goal).
#
# A guest (the drop-in that `wasmcache exec` or $WASMCACHE_AUTO put into a program that never asked
# for wasmcache) logs nothing through `logging` at all: the program's root logger, its handlers and
# its format are the program's, and a `logging.basicConfig(level=logging.INFO)` must not start
# printing wasmcache's hits (issue 14). There, `become_guest()` routes every record to the process's
# stderr as `wasmcache[PID]: ...`, a line no one can take for the program's own: a warning once per
# process and cause (its message template), info and debug only when $WASMCACHE_VERBOSE asks
# (`wasmcache -v exec` sets it to 1, `--debug exec` to 2).
#

_WARNING: Final = 30
_NAME: Final = "wasmcache"
PROGRESS: Final = "wasmcache_progress"  # the attribute that marks a progress record


class _Guest:
    """Where a guest's records go: stderr, prefixed; warnings once per cause; the rest on request."""

    __slots__ = ("said", "threshold")

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.said: set[str] = set()

    def emit(self, level: int, msg: str, args: tuple[object, ...], *, progress: bool = False,
             cause: str | None = None) -> None:
        if level < self.threshold and not (progress and _stderr_is_a_terminal()):
            return
        if level >= _WARNING:
            cause = cause or msg  # once per process and cause: the template, not its arguments, unless named
            if cause in self.said:
                return
            self.said.add(cause)
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):
            text = f"{msg} {args!r}"
        text = text.removeprefix("wasmcache: ")
        if level >= _WARNING:
            text = "warning: " + text
        import _wasmcache_hook  # noqa: PLC0415 - loaded already: it made this process a guest

        _wasmcache_hook.say(text)


_guest: _Guest | None = None


_progress_to_terminal = False


def show_progress_on_terminal() -> None:
    """The CLI's switch: progress records (a download, a long compile) go to stderr as one line each when
    it is a terminal, whatever logging says; elsewhere they stay INFO records."""
    global _progress_to_terminal  # noqa: PLW0603 - one switch per process
    _progress_to_terminal = _stderr_is_a_terminal()


def _stderr_is_a_terminal() -> bool:
    """A person may be watching: progress lines (a download, a long compile) are worth a line there."""
    try:
        return os.isatty(2)
    except OSError:
        return False


def verbosity_threshold(environ: Mapping[str, str]) -> int:
    """$WASMCACHE_VERBOSE as the lowest level a guest prints: 2 (or debug) debug, on (1, yes ...) info."""
    import _wasmcache_hook  # noqa: PLC0415 - the switches' one reading

    return {2: 10, 1: 20}.get(_wasmcache_hook.verbosity(environ), _WARNING)


def become_guest() -> None:
    """From now on this process's records go to stderr as a guest's (see the module docstring)."""
    global _guest  # noqa: PLW0603 - one switch per process
    if _guest is None:
        _guest = _Guest(verbosity_threshold(os.environ))


def end_guest() -> None:
    """The program installed wasmcache itself: its own logging decides again."""
    global _guest  # noqa: PLW0603 - one switch per process
    _guest = None


def is_guest() -> bool:
    return _guest is not None


def guest_verbose() -> bool:
    """A guest asked to print info lines (so, e.g., a summary at exit is worth computing)."""
    return _guest is not None and _guest.threshold <= 20


_holding: list[tuple[int, str, tuple[object, ...]]] | None = None


class held:  # noqa: N801 - used like a context manager function, without importing contextlib
    """Hold back every record while the block runs (the caller decides afterwards: `replay` or drop).

    The drop-in opens its root this way: whether the core's words about a root it cannot create
    are true for the program depends on what the drop-in does next (issue 14).
    """

    def __init__(self) -> None:
        self.records: list[tuple[int, str, tuple[object, ...]]] = []

    def __enter__(self) -> list[tuple[int, str, tuple[object, ...]]]:
        global _holding  # noqa: PLW0603 - one holder at a time (the drop-in's install, under its lock)
        _holding = self.records
        return self.records

    def __exit__(self, *_exc: object) -> None:
        global _holding  # noqa: PLW0603
        _holding = None


def replay(records: list[tuple[int, str, tuple[object, ...]]]) -> None:
    for level, msg, args in records:
        _Log._log(level, msg, args)  # noqa: SLF001


class _Log:
    """The subset of `logging.Logger` wasmcache uses, forwarded to the real "wasmcache" logger."""

    __slots__ = ()

    def debug(self, msg: str, *args: object) -> None:
        self._log(10, msg, args)

    def info(self, msg: str, *args: object) -> None:
        self._log(20, msg, args)

    def progress(self, msg: str, *args: object) -> None:
        """An INFO record a person waiting at a terminal should see (a download, a long compile): marked
        `wasmcache_progress`, so the CLI and the drop-in show it on a terminal even without -v."""
        self._log(20, msg, args, progress=True)

    def warning(self, msg: str, *args: object) -> None:
        self._log(_WARNING, msg, args)

    def warning_about(self, subject: str, msg: str, *args: object) -> None:
        """A warning whose cause is `subject` (a substituter, a tool's declaration): a guest says it once
        per subject, where `warning` is said once per template."""
        self._log(_WARNING, msg, args, cause=f"{msg}\0{subject}")

    def error(self, msg: str, *args: object) -> None:
        self._log(40, msg, args)

    @staticmethod
    def _log(level: int, msg: str, args: tuple[object, ...], *, progress: bool = False,
             cause: str | None = None) -> None:
        holding = _holding
        if holding is not None:
            holding.append((level, msg, args))
            return
        guest = _guest
        if guest is not None:
            guest.emit(level, msg, args, progress=progress, cause=cause)
            return
        if progress and _progress_to_terminal:
            try:
                sys.stderr.write((msg % args if args else msg) + "\n")
                sys.stderr.flush()
            except (OSError, ValueError, TypeError, AttributeError):
                pass
            return
        if "logging" not in sys.modules and level < _WARNING:
            return  # logging was never imported, so never configured: this record goes nowhere
        import logging  # noqa: PLC0415 - imported already, or a warning worth its import

        logger = logging.getLogger(_NAME)
        if logger.isEnabledFor(level):
            # The record names wasmcache's caller, not this file.
            logger.log(level, msg, *args, stacklevel=4 if progress else 3,
                       extra={PROGRESS: True} if progress else None)


log: Final = _Log()


# ==================== loaded =========================================================================================
#
# The modules this process has loaded, per engine: the same key loaded again with the same Engine
# returns the same module, while its entry is still the file it maps (one stat).
#
# Also `WeakKeyMap`, the per-engine map this memo and the fingerprints' are kept in: a dictionary keyed
# weakly by objects, on the C-level `_weakref` and `_thread` alone. `weakref.WeakKeyDictionary` and
# `threading.Lock` cost ~1.4 ms of imports (weakref, _weakrefset, threading) in every process that loads
# a module, where wasmtime imports neither; not generic, as a `typing.Generic` class costs ~0.2 ms to
# build at import (issue 14, item 7).
#

def held_weakly(function: Any) -> Any:
    """`function` for what the process keeps for its whole life (os.register_at_fork, the hook's pending
    callbacks): see _wasmcache_hook.held_weakly. The hook of an older installation (`exec` from it, this
    Python's own wasmcache newer) has none: such a registration is then strong, as it was, which costs only
    time at the program's exit. The hook is imported here, not above: a library hit never needs it."""
    import _wasmcache_hook  # noqa: PLC0415

    weakly = getattr(_wasmcache_hook, "held_weakly", None)
    return function if weakly is None else weakly(function)


class WeakKeyMap:
    """`key -> value` while `key` lives: an entry goes when its key is collected (never keeps it alive)."""

    __slots__ = ("_entries", "_lock")

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Any, Any]] = {}
        self._lock = allocate_lock()

    def get(self, key: Any) -> Any:
        found = self._entries.get(id(key))
        if found is None or found[0]() is not key:
            return None
        return found[1]

    def setdefault(self, key: Any, value: Any) -> Any:
        """The value for `key`, storing `value` first if it has none."""
        with self._lock:
            found = self.get(key)
            if found is not None:
                return found
            ident = id(key)

            def forget(_: object, ident: int = ident, entries: dict[int, tuple[Any, Any]] = self._entries) -> None:
                entries.pop(ident, None)  # the key is being collected: its id may be reused after this

            self._entries[ident] = (ref(key, forget), value)
            return value

    def put(self, key: Any, value: Any) -> None:
        """Store `value` for `key`, replacing any."""
        with self._lock:
            self._entries.pop(id(key), None)
        self.setdefault(key, value)

    def alive(self) -> list[Any]:
        """The keys still alive (a snapshot)."""
        with self._lock:
            found = list(self._entries.values())
        return [key for key in (reference() for reference, _value in found) if key is not None]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# Modules already loaded in this process, per engine object, then (root, mode, kind, key): the
# same key loaded twice through the same root and mode with the same Engine returns the same
# module (a Module only works with its own Engine). Another root still gets its entry; "memory"
# never returns a mapped module. Weak on the engine (never keeps one alive), strong on the
# modules: they live as long as their engine, and are served again only while their entry is the
# file they map (an in-place rewrite, which no writer of ours does, is loaded afresh). A weak
# module here was handed out while wasmtime's __del__ was freeing its native handle in another
# thread (the GIL is released in that C call, and the weak reference is cleared only after
# __del__): a use-after-free that the drop-in's threads hit.
class Loaded:
    """A module of the per-process memo, and the identity of the entry it maps (None: a copy)."""

    __slots__ = ("entry", "identity", "module")

    def __init__(self, module: Any, entry: str, identity: Identity | None) -> None:
        self.module = module
        self.entry = entry
        self.identity = identity

    @classmethod
    def of(cls, module: Any, entry: Path, mode: str, mapped: Identity | None) -> Loaded:
        """`mapped`: the identity of the entry the hit mapped; None after a miss (one stat here)."""
        identity = mapped if mode == "mmap" else None
        if mode == "mmap" and identity is None:
            with contextlib.suppress(OSError):
                identity = Identity.of(os.stat(entry, follow_symlinks=False))
        return cls(module, str(entry), identity)

    def still_valid(self) -> bool:
        """The entry it maps is still the file it was (one stat): a rewrite in place is not served again."""
        if self.identity is None:
            return True
        try:
            return Identity.of(os.stat(self.entry, follow_symlinks=False)) == self.identity
        except OSError:
            return True  # collected or cleared: the mapping holds its inode, intact


loaded_by_engine = WeakKeyMap()  # wasmtime.Engine -> {(root, mode, kind, key): _Loaded}
loaded_guard = allocate_lock()

# How many modules the memo keeps alive, over all engines: the least recently used beyond that is let
# go (the program's own references keep it alive; a later load maps it again). Each module mapped from
# a file holds a descriptor: an unbounded memo ran a service that loads many modules, or one that keeps
# many engines, out of descriptors where the same program unwrapped frees each module it drops.
MEMO_LIMIT = 64
_recent: dict[tuple[int, tuple[str, str, str, str]], Any] = {}  # (id(engine), key) -> ref(engine), oldest first


def forget_all() -> None:
    """Empty the memo of every engine (under `loaded_guard`)."""
    loaded_by_engine.clear()
    _recent.clear()


def remember(engine: Any, loaded: dict[tuple[str, str, str, str], Loaded], key: tuple[str, str, str, str],
             found: Loaded | None = None) -> list[Loaded]:
    """Note `key` of `engine`'s memo as used now (storing `found` under it, if given); returns what the
    memo let go, to be dropped by the caller after it releases `loaded_guard` (a module's release runs
    wasmtime's destructor). Called under `loaded_guard`."""
    if found is not None:
        loaded[key] = found
    order = (id(engine), key)
    _recent.pop(order, None)
    _recent[order] = ref(engine)
    released: list[Loaded] = []
    while len(_recent) > MEMO_LIMIT:
        oldest = next(iter(_recent))
        holder = _recent.pop(oldest)()
        memo = loaded_by_engine.get(holder) if holder is not None else None
        gone = memo.pop(oldest[1], None) if memo is not None else None
        if gone is not None:
            released.append(gone)
    return released


# The drop-in keeps no module alive (its caches have no memo: the program's own objects decide how long a
# module lives, as unwrapped): what each module it loaded maps, while that module lives.
served_entries = WeakKeyMap()  # wasmtime.Module -> (entry path, identity): never the module itself


def mapped_entry(engine: Any, module: Any) -> tuple[str, Identity] | None:
    """(entry path, identity) of the entry `module` maps, as this process loaded it; None for a copy."""
    served = served_entries.get(module)
    if served is not None:
        found_entry: tuple[str, Identity] = served
        return found_entry
    loaded = loaded_by_engine.get(engine)
    if not loaded:
        return None
    with loaded_guard:
        found = next((each for each in loaded.values() if each.module is module), None)
    return (found.entry, found.identity) if found is not None and found.identity is not None else None


# ==================== native =========================================================================================
#
# The wasmtime calls wasmcache makes: compile, deserialize and map, always wasmtime's own.
#
# The drop-in (`wasmcache.install()`) replaces `wasmtime.Module.__init__`, `from_file` and
# `deserialize_file` (and Component's). wasmcache's own compiles and loads must still reach
# wasmtime, so the originals are captured here, once per kind, before anything patches them, and
# every call the core makes goes through this module.
#

class EntryRefusedError(CacheError):
    """wasmtime refused to deserialize a checked artifact (the message is its reason)."""

    def __init__(self, reason: str, wasmtime_error: BaseException | None = None) -> None:
        super().__init__(reason)
        self.wasmtime_error = wasmtime_error


_originals: dict[str, dict[str, Any]] = {}
_guard = allocate_lock()


def compiled_class(kind: Kind) -> Any:
    """wasmtime.Module, or Component (whose import costs ~10 ms: only when a component is loaded)."""
    if kind == "module":
        import wasmtime  # noqa: PLC0415

        return wasmtime.Module
    from wasmtime.component import Component  # noqa: PLC0415

    return Component


def originals(kind: Kind) -> dict[str, Any]:
    """wasmtime's own `__init__`, `from_file`, `deserialize` and `deserialize_file` of `kind`'s class.

    Captured on first use; the drop-in calls this before it patches anything.
    """
    found = _originals.get(kind)
    if found is None:
        with _guard:
            found = _originals.get(kind)
            if found is None:
                cls = compiled_class(kind)
                found = {
                    "class": cls,
                    "__init__": cls.__dict__["__init__"],
                    "from_file": cls.__dict__["from_file"],
                    "deserialize": cls.__dict__["deserialize"],
                    "deserialize_file": cls.__dict__["deserialize_file"],
                }
                _originals[kind] = found
    return found


def compile_wasm(kind: Kind, engine: Any, data: bytes | str) -> Any:
    """`Module(engine, data)` as wasmtime does it (WAT text accepted); raises wasmtime.WasmtimeError."""
    found = originals(kind)
    cls = found["class"]
    compiled = cls.__new__(cls)
    found["__init__"](compiled, engine, data)
    return compiled


def deserialize(kind: Kind, engine: Any, data: bytes | bytearray) -> Any:
    """`Module.deserialize(engine, data)`: a copy in memory, no mapping held."""
    found = originals(kind)
    return found["deserialize"].__get__(None, found["class"])(engine, data)


def deserialize_file(kind: Kind, engine: Any, path: str) -> Any:
    """`Module.deserialize_file(engine, path)`: wasmtime maps `path`."""
    found = originals(kind)
    return found["deserialize_file"].__get__(None, found["class"])(engine, path)


# ==================== fingerprint ====================================================================================
#
# Engine fingerprints: the exact identity of any engine.
#
# wasmtime-py cannot read a `Config` back, so an engine is identified by what it writes: compile
# a one-function module and hash the `.wasmtime.engine` section of its serialized form (wasmtime
# version, target, every Cranelift and CPU flag, tunables, wasm features). That costs ~0.7 ms in a
# fresh process (as much as a whole mapped load), and checking settings in a child far more, so what
# a probe found is remembered across processes: the memo, ROOT/engines/ of an initialized cache root,
# keyed by the settings, the exact wasmtime library file, this boot and the WASMTIME_* environment
# (wasmtime's default Config reads WASMTIME_BACKTRACE_DETAILS, which changes the engine). Nothing is
# remembered anywhere else.
#

# (module (func (result i32) i32.const 0)): the smallest module with code. Its engine section is
# the same as the empty module's; compiling a body is what fails for Winch + exceptions & co.
PROBE_MODULE: Final = (b"\0asm\x01\0\0\0"  # magic, version
                       b"\x01\x05\x01\x60\x00\x01\x7f"  # type section: [] -> [i32]
                       b"\x03\x02\x01\x00"  # function section
                       b"\x0a\x06\x01\x04\x00\x41\x00\x0b")


FIRST_WINCH_RELEASE: Final = 45


def wasmtime_major() -> int:
    head = wasmtime_version().split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def wasmtime_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("wasmtime")
    except PackageNotFoundError:
        return "unknown"


# --- fingerprints -------------------------------------------------------------------------------


class EngineIdentity:
    """An engine's `.wasmtime.engine` section and its digest (the namespace name)."""

    __slots__ = ("fingerprint", "section")

    def __init__(self, section: bytes, fingerprint: str) -> None:
        self.section = section
        self.fingerprint = fingerprint


_identities = WeakKeyMap()  # wasmtime.Engine -> EngineIdentity


def engine_section(engine: wasmtime.Engine) -> bytes:
    """Compile and serialize the probe module with `engine` and return its engine section.

    An engine that cannot compile a function is a ConfigError: every load would fail, and the
    wasm would be blamed.
    """
    import wasmtime  # noqa: PLC0415

    try:
        serialized = bytes(compile_wasm("module", engine, PROBE_MODULE).serialize())
    except wasmtime.WasmtimeError as exc:
        from ._errors import wasmtime_reason  # noqa: PLC0415

        raise EngineCannotCompileError(f"this engine cannot compile a function: {wasmtime_reason(exc)}") from None
    from ._elf import ENGINE_SECTION, find_section  # noqa: PLC0415 - a probe only: a hit reads the memo

    return find_section(serialized, ENGINE_SECTION)


def fingerprint_of_section(section: bytes) -> str:
    return str(blake3_hasher()(b"wasmcache-engine-v1\0" + section).hexdigest())


def remember_fingerprint(engine: wasmtime.Engine, section: bytes) -> EngineIdentity:
    fingerprint = _memo_fingerprints.get(section)  # read with the section from a memo: no hashing on a hit
    identity = EngineIdentity(section, fingerprint if fingerprint is not None else fingerprint_of_section(section))
    _identities.put(engine, identity)
    return identity


def correct_fingerprint(identity: EngineIdentity) -> bool:
    """Whether `identity`'s fingerprint, which a memo gave without hashing, was not its section's; if so it
    is corrected (for every cache on its engine) and the memo file that named it removed (the next process
    probes and remembers the right one).

    A hit believes the memo (hashing is kept off its path); this hash is taken where a wrong fingerprint
    would do harm or shows: before a miss publishes under it, and wherever its namespace disagrees with the
    engine (its engine file, a full check's section comparison, wasmtime's refusal of an entry: another
    configuration's good entry, which must not be set aside for it). See `_cache._another_configurations`.
    """
    right = fingerprint_of_section(identity.section)
    if right == identity.fingerprint:
        return False
    memo_file = _memo_files.pop(identity.section, None)
    log.warning("wasmcache: the engine memo %s named another configuration's fingerprint; it is computed again",
                memo_file)
    _memo_fingerprints[identity.section] = right
    identity.fingerprint = right
    if memo_file is not None:
        with contextlib.suppress(OSError):  # a read-only root: each process corrects it, at its first load
            os.unlink(memo_file)
    return True


def default_engine(memo: EngineMemo | None) -> wasmtime.Engine:
    """`wasmtime.Engine()`, with its fingerprint remembered across processes in `memo`.

    The probe compile costs ~0.7 ms in a fresh process, as much as the whole mapped load; the
    default configuration cannot abort, so no child check is needed, only the memo.
    """
    import wasmtime  # noqa: PLC0415

    engine = wasmtime.Engine()
    described = "wasmtime.Engine()"
    section = remembered_section(memo_key_for(described), memo, described, lambda: engine_section(engine))
    remember_fingerprint(engine, section)
    return engine


def engine_identity(engine: wasmtime.Engine) -> EngineIdentity:
    """The exact identity of `engine` (one probe compile per engine per process, ~1 ms)."""
    known: EngineIdentity | None = _identities.get(engine)
    if known is not None:
        return known
    return remember_fingerprint(engine, engine_section(engine))


def engine_fingerprint(engine: wasmtime.Engine) -> str:
    """A hex digest that differs for every engine configuration that changes compiled code."""
    identity = engine_identity(engine)
    correct_fingerprint(identity)  # one a memo gave unhashed is checked before it is handed out (and shows)
    return identity.fingerprint


# --- the memo: engine sections and verdicts remembered across processes ---------------------------


_validated: dict[str, bytes] = {}
_memo_fingerprints: dict[bytes, str] = {}  # section -> its fingerprint, as a memo file recorded them
_memo_files: dict[bytes, Path] = {}  # section -> the memo file that recorded its fingerprint
_in_memo: set[tuple[str, str]] = set()  # (memo directory, key) known to be on disk


def remembered_section(memo_key: str, memo: EngineMemo | None, described: object,
                       probe: Callable[[], bytes]) -> bytes:
    """The engine section for `memo_key`: from this process, else `memo`, else `probe()`.

    Whatever this process knows is also put into `memo` once (a root this process has not used
    yet gets its memo, so the next process there neither forks nor probes).
    """
    section = _validated.get(memo_key)
    if memo is None:
        if section is None:
            section = probe()
        _validated[memo_key] = section
        return section
    place = (str(memo.directory), memo_key)
    if place in _in_memo and section is not None:
        return section
    on_disk = memo.read(memo_key)
    if section is None:
        section = on_disk if on_disk is not None else probe()
    if on_disk != section:
        memo.write(memo_key, described, section)
    _validated[memo_key] = section
    _in_memo.add(place)
    return section


def parse_engine_memo(raw: bytes) -> tuple[bytes, bytes, str] | None:
    """An engine memo's (key, section, fingerprint) as `EngineMemo.write` wrote them, or None."""
    header, _, rest = raw.partition(b"\n")
    fields = header.split(b" ")
    if (len(fields) != 3 or not fields[0].isdigit() or not fields[1].isdigit()
            or not is_key(fields[2].decode("latin-1")) or int(fields[0]) + int(fields[1]) > len(rest)):
        return None
    length = int(fields[0])
    return rest[:length], rest[length: length + int(fields[1])], fields[2].decode()


class EngineMemo:
    """Where verdicts and fingerprints are remembered: ROOT/engines/ of an initialized root.

    Read from any root that has one; written only where the root is writable.
    """

    def __init__(self, directory: Path, *, writable: bool) -> None:
        self.directory = directory
        self.writable = writable

    @classmethod
    def of_default_root(cls) -> EngineMemo | None:
        """The default root's memo, if that root already exists (nothing is created for it)."""
        if disabled_by_environment():
            return None
        try:
            root = resolve_root(None)
        except Exception:  # a broken environment must not stop the engine from being built
            return None
        if not has_marker(root):
            return None
        return cls(root / ENGINES_DIR, writable=os.access(root, os.W_OK))

    def path(self, memo_key: str) -> Path:
        return self.directory / f"{memo_file_name(memo_key)}.engine"

    def read(self, memo_key: str) -> bytes | None:
        # Binary, read in one syscall: this runs in every fresh process (the JSON version cost 0.15 ms;
        # sections are ~1 KiB, and a 1 MiB read costs an mmap per process).
        raw = read_small_file(self.path(memo_key), 1 << 16, trusted=True, mark_used=self.writable)
        parsed = parse_engine_memo(raw) if raw is not None else None
        if parsed is None or parsed[0] != memo_key.encode():
            return None  # another text's memo under the same name, an older format, or damage: not this one
        _key, section, fingerprint = parsed
        _memo_fingerprints[section] = fingerprint
        _memo_files[section] = self.path(memo_key)
        return section

    def write(self, memo_key: str, described: object, section: bytes) -> None:
        if not self.writable:
            return
        # Lengths of the key and the section, the section's fingerprint; the key, the section; then the
        # settings as JSON for people reading the file.
        import json  # noqa: PLC0415 - a miss's work: a hit only reads

        text = json.dumps(described).encode()
        key = memo_key.encode()
        record = (f"{len(key)} {len(section)} {fingerprint_of_section(section)}\n".encode() + key + section + b"\n"
                  + text + b"\n")
        path = self.path(memo_key)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomically(path, record)
        except OSError as exc:
            log.debug("could not remember engine settings in %s: %s", path, exc)


def memo_key_for(settings: str) -> str:
    """Settings (a complete, canonical description) + the wasmtime library file + this boot + WASMTIME_*:
    what an engine memo is remembered under, spelled out (its file is named by `memo_file_name`)."""
    return f"{settings}\0{_wasmtime_library_identity()}\0{host_identity()}\0{_wasmtime_environment()}"


def _wasmtime_environment() -> str:
    """The WASMTIME_* variables: wasmtime's default Config reads some (WASMTIME_BACKTRACE_DETAILS
    changes the engine section), so a fingerprint remembered without them could be another engine's.

    Every fresh process does this: os.environ's own iteration runs in Python, a step per variable;
    its underlying bytes mapping (CPython's `_data`) is scanned at C speed when it is there.
    """
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict):
        found = sorted(k for k in data if k.startswith(b"WASMTIME_"))
        return "\0".join(f"{os.fsdecode(k)}={os.fsdecode(data[k])}" for k in found)
    return "\0".join(sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("WASMTIME_")))


_library_identity: str | None = None


def _wasmtime_library_identity() -> str:
    """The exact wasmtime build in use: the shared library's path, size and mtime."""
    global _library_identity  # noqa: PLW0603 - computed once per process
    if _library_identity is None:
        import wasmtime._ffi  # noqa: PLC0415

        library = getattr(getattr(wasmtime._ffi, "dll", None), "_name", None)  # noqa: SLF001
        try:
            st = os.stat(library) if library else None
        except OSError:
            st = None
        # No importlib.metadata here: importing it costs ~25 ms, and the library file names the build.
        _library_identity = f"{library}:{st.st_size}:{st.st_mtime_ns}" if st else "unknown"
    return _library_identity


_cpu_identity: str | None = None
_CPUINFO_LINES: Final = rb"(?m)^(?:model name|flags|Features|CPU implementer|CPU part)\s*:.*$"  # compiled when used


def host_identity() -> str:
    """This boot of this machine (Linux's boot_id), else the CPU's identity.

    Fingerprints depend on the CPU's features, which cannot change without a reboot, so a memo
    keyed by the boot is as exact as one keyed by /proc/cpuinfo, and reading boot_id costs a
    fraction of parsing cpuinfo on every fresh process. (Should a live migration ever move a VM
    to a CPU with fewer features, wasmtime's own compatibility check refuses the entries and they
    are recompiled.)
    """
    try:
        fd = os.open("/proc/sys/kernel/random/boot_id", os.O_RDONLY)
    except OSError:
        return cpu_identity()
    try:
        boot = os.read(fd, 64).strip()
    except OSError:
        return cpu_identity()
    finally:
        os.close(fd)
    return "boot:" + boot.decode("ascii", "replace") + ":" + os.uname().nodename


def cpu_identity() -> str:
    """The host CPU's model and feature flags (CPU features are part of the fingerprint)."""
    global _cpu_identity  # noqa: PLW0603 - computed once per process
    if _cpu_identity is None:
        uname = os.uname()
        parts = [uname.machine, uname.sysname]
        try:
            # One raw read; keep the stable lines of the first processor (not its MHz, which varies).
            fd = os.open("/proc/cpuinfo", os.O_RDONLY)
            try:
                raw = os.read(fd, 16384)
            finally:
                os.close(fd)
            parts += [m.decode("utf-8", "replace") for m in re.findall(_CPUINFO_LINES, raw.split(b"\n\n", 1)[0])]
        except OSError:
            import platform  # noqa: PLC0415

            parts.append(platform.processor())
        _cpu_identity = str(blake3_hasher()("\n".join(parts).encode()).hexdigest()[:32])
    return _cpu_identity


# ==================== root ===========================================================================================
#
# The cache root: where it is, how it proves it is ours, who may write it, and what it holds.
#
# Every path to a root (argument, `--cache-dir`, `$WASMCACHE_DIR`, the platform default) goes
# through `resolve_root`, once: the result is absolute, so a later `chdir` cannot move the cache.
#

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
        return f"chmod o-w {shell_word(path)}"
    if is_entry_name(path.name) and is_namespace_name(path.parent.name):  # never make another's code your own
        return f"rm {shell_word(path)} (another user's file where an entry belongs; the next load compiles it again)"
    return f"use a cache directory of your own, or make this one yours: sudo chown $(id -u) {shell_word(path)}"


def shell_word(path: Path | str) -> str:
    """`path` as one inert word of a command a fix tells the user to run: a name with a space, a quote or
    `$(...)` pastes as itself, never as two words or a command of its own."""
    import shlex  # noqa: PLC0415 - only for a message

    return shlex.quote(str(path))


def immutable_fix(path: Path | str) -> str:
    """What to run when a file or directory of ours refuses every change though its mode allows it."""
    word = shell_word(path)
    return f"immutable? `lsattr -d {word}`; `chattr -i {word}`"


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
    if not os.path.lexists(root):
        return False
    directory = os.path.isdir(root)
    if directory and _empty_directory(root):
        return False
    if directory and not os.access(root, os.R_OK | os.X_OK):  # not "no marker": we may not look
        raise NotACacheError(f"{root}: cannot be read (Permission denied: another user's, or its mode changed); "
                             f"refusing to {action} it")
    if directory and not os.path.lexists(root / MARKER_NAME) and _adoptable(root):
        return False  # a first load stopped while making it: the next completes it (an empty cache until then)
    marker = _read_marker(root)
    if not marker.startswith("wasmcache"):
        raise NotACacheError(f"{not_a_root_message(root)}; refusing to {action} it")
    _check_layout(root, marker)
    return True


def missing_home_above(root: Path) -> str | None:
    """Why `root` cannot be made if it lies in the user's home directory and that does not exist, else None:
    a root's missing parents are made (as the XDG spec asks of $XDG_CACHE_HOME), never the home directory."""
    import _wasmcache_hook  # noqa: PLC0415 - stdlib only: the home directory's one reading

    home = _wasmcache_hook.home_directory()
    if home is None or os.path.lexists(home):
        return None
    home = os.path.normpath(home)
    if os.path.commonpath([home, str(root)]) != home:
        return None
    return f"the home directory {home} does not exist"


def unreachable_reason(root: Path) -> str | None:
    """Why nothing can ever be at `root`, in a few words, or None (it is there, or merely not created yet):
    what looking it up says (Not a directory, a loop, a name too long, no permission), the link to nothing
    a missing root lies under (`~/.cache` -> an unmounted disk), which mkdir would report as "File exists",
    or the missing home directory it lies in (never made: `missing_home_above`)."""
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return _dangling_link_above(root) or missing_home_above(root)
    except NotADirectoryError:
        on_its_way = next((p for p in reversed(root.parents) if os.path.lexists(p) and not os.path.isdir(p)), None)
        return f"Not a directory: {on_its_way} is a file" if on_its_way else "Not a directory"
    except OSError as exc:
        return exc.strerror or str(exc)
    return _dangling_link_above(root) if stat.S_ISLNK(st.st_mode) else None  # a root that is a link to nothing


def _empty_directory(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError:
        return False


def _dangling_link_above(path: Path) -> str | None:
    """`path` itself, or the nearest of its parents that is there, if that is a link to nothing (in words):
    a loop, or a link (through others, perhaps) to a path that does not exist."""
    above = next((p for p in (path, *path.parents) if os.path.lexists(p)), None)
    if above is None or not os.path.islink(above):
        return None
    which = "it" if above == path else str(above)
    try:
        os.stat(above)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{which} is a symbolic link that leads back to itself"
        try:
            direct = os.readlink(above)
        except OSError:
            return None
        final = os.path.realpath(above)  # as far as the links go: the first path that is not there
        through = os.path.normpath(os.path.join(os.path.dirname(above), direct))
        on = f" (and on to {final})" if final != through else ""
        return f"{which} is a symbolic link to {direct}{on}, which does not exist"
    return None


def _ours_while_initializing(name: str) -> bool:
    """The markers, and the temp files of a process writing them (`<stem>.<random>.tmp`)."""
    if name in (MARKER_NAME, CACHEDIR_TAG_NAME):
        return True
    return name.endswith(TEMP_SUFFIX) and key_of(name) in (MARKER_NAME, key_of(CACHEDIR_TAG_NAME))


def _adoptable(root: Path) -> bool:
    """`root` holds nothing but what a process initializing it writes before its marker (the markers' temp
    files, CACHEDIR.TAG, old versions' memos): a load completes it, and maintenance reads it as empty."""
    with os.scandir(root) as it:
        return all(_ours_while_initializing(e.name) or _memos_of_old_versions(e) for e in it)


def _memos_of_old_versions(entry: os.DirEntry[str]) -> bool:
    """`engines/` holding only engine memos: what wasmcache 0.1 wrote into the default root before
    creating it (issue 8, item 1); it is ours, so such a root is completed, not refused."""
    if entry.name != ENGINES_DIR or not entry.is_dir(follow_symlinks=False):
        return False
    try:
        with os.scandir(entry.path) as it:
            return all(e.is_file(follow_symlinks=False) and (is_memo_name(ENGINES_DIR, e.name) or is_temp_name(e.name))
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
        raise NotACacheError(f"{root}: {unreachable_reason(root) or 'exists and is not a directory'}; choose a new or "
                             f"empty directory as the cache root ({_ROOT_SETTINGS})")
    if os.path.lexists(root / MARKER_NAME):
        if _read_marker(root).startswith("wasmcache"):
            return  # another process completed this root a moment ago
        raise NotACacheError(f"{not_a_root_message(root)}; refusing to use it")  # garbage, empty, a directory ...
    missing_home = missing_home_above(root)
    if missing_home is not None:  # HOME=/nonexistent (a service account's): making it is not a cache's business
        raise FileNotFoundError(errno.ENOENT, missing_home)
    made = not os.path.lexists(root)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        _complete_root(root)
    except OSError:
        if made:  # a full disk ...: no empty root left behind (rmdir fails if a racing process wrote in it)
            with contextlib.suppress(OSError):
                os.rmdir(root)
        raise


def _complete_root(root: Path) -> None:
    # Another process may be initializing the same new root right now: once its marker exists,
    # whatever else it has written is ours too (8 processes starting on a new root raced here).
    if not _adoptable(root) and not _read_marker(root).startswith("wasmcache"):
        raise NotACacheError(
            f"{root}: exists, is not empty and is not a wasmcache root (no {MARKER_NAME} file); "
            "refusing to use it, so that clear or gc can never delete files that are not ours. "
            f"Choose a new or empty directory as the cache root ({_ROOT_SETTINGS})."
        )
    write_atomically(root / CACHEDIR_TAG_NAME, CACHEDIR_TAG.encode(), mode=0o644)
    # The marker last: a root is ours only once it is complete.
    write_atomically(root / MARKER_NAME, MARKER_TEXT.encode(), mode=0o644, durable=True)


# ==================== storage ========================================================================================
#
# Storage: the files of one namespace and every operation on them (diskcache's `Disk`).
#
# The cache, the miss path and the maintenance commands decide *when* to load, publish, repair,
# evict or clear; this module alone knows *which files* a key has and *how* each of those is done:
#
# - `Namespace.check`: the one check of an entry, used by loads, `verify` and `push`. An entry is
#   trusted when the fd we opened (never through a symlink) is a regular file whose identity equals
#   the one recorded after its publication; otherwise (a copied or restored root, tampering) only a
#   full check will do: its content's blake3 must equal the record's and its `.wasmtime.engine`
#   section the namespace's (a substituted entry's: the namespace's but for ISA flags the host has).
# - `Namespace.publish`: record (without identity), entry by exclusive temp file + fsync + rename +
#   directory fsync, record with the identity stat'ed after the rename. Nothing is written in place.
#   Identical content is stored once, whichever came first: the new key becomes a second name of the
#   identical entry's inode, linked only once the caller accepted (mapped) that entry.
# - `Namespace.quarantine_if_unchanged` / `evict` / `clear_key`: under the key's lock, and a bad
#   entry only if the path still names the very file that was judged.
# - `Namespace.scan`: the one classification of a namespace's files into keys (entry, record,
#   temp files), temp files of no key, and files wasmcache did not write.
#

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
        """A record of ours without its entry: a writer killed between its record and its rename. (A file of
        a record's name that does not hold one is not ours: nothing removes it.) Reads the record."""
        return self.record is not None and self.entry is None and read_record(Path(self.record.path)) is not None


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
        if not stat.S_ISDIR(os.lstat(target_dir).st_mode):  # a link out of the root is never followed
            raise NotADirectoryError(target_dir)
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

    def read_section(self, limit: int = 1 << 20) -> bytes | None:
        """The engine section every entry here must carry (the namespace's `engine` file)."""
        return read_small_file(self.path / NAMESPACE_ENGINE_FILE, limit)

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
            detail = ("the entry is a symbolic link (never followed)" if exc.errno == errno.ELOOP
                      else f"cannot open the entry safely: {exc.strerror}")
            raise UntrustedEntryError("corrupt", detail) from None
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
                        blake3 = blake3_hasher()
                        digest, size = blake3(data, max_threads=blake3.AUTO).hexdigest(), len(data)
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

    def rerecord(self, key: str, checked: CheckedEntry) -> bool:
        """The entry's content checked out under a new identity (copied root, restore): record that identity.
        False if the record could not be written (a namespace nobody may change)."""
        try:
            write_record(self.record_path(key), checked.record._replace(identity=Identity.of(checked.stat)))
        except OSError:
            return False
        return True

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
            if os.path.lexists(entry):
                return False  # neither moved nor removed (chattr +i, a directory nobody may change): all stays
            with contextlib.suppress(OSError):
                os.unlink(self.record_path(key))
            return True
        finally:
            lock.release()

    def evict(self, key: str) -> Literal[True] | str | None:
        """Unlink an entry and its record under the key's lock (a mapped entry lives on in its users): True;
        None if a writer holds the key; else the path of the file that refused (the entry, its record, or its
        lock file: chattr +i, a link, a directory ...), and then everything stays."""
        lock = self.lock(key)
        try:
            if not lock.acquire(blocking=False):
                return None  # being compiled, published or repaired right now
        except OSError as exc:
            return str(exc.filename or lock.path)
        try:
            self._unlink_entry_and_record(key)
        except OSError as exc:
            lock.release()
            return str(exc.filename or self.entry_path(key))
        lock.release(unlink=True)
        return True

    def _unlink_entry_and_record(self, key: str) -> None:
        """Both, or neither (OSError): the record is moved aside first and put back if the entry refuses
        (chattr +i ...), so no entry is ever left without its record, nor a record without its entry."""
        entry, record = self.entry_path(key), self.record_path(key)
        aside = temp_path_for(record)
        moved = True
        try:
            os.rename(record, aside)
        except FileNotFoundError:
            moved = False
        try:
            os.unlink(entry)
        except FileNotFoundError:
            pass
        except OSError:
            if moved:
                os.rename(aside, record)
            raise
        if moved:
            with contextlib.suppress(OSError):
                os.unlink(aside)

    def clear_key(self, key: str) -> bool | str | None:
        """Remove every file of `key` under its lock: True if its entry went, False if it had none; None if the
        key is busy; else the path of the file that refused (its entry and record then stay, as in `evict`)."""
        lock = self.lock(key)
        if not lock.try_acquire():
            return None  # a writer between its record and its rename keeps its key: its entry is whole when it lands
        refused: str | None = None
        try:
            had_entry = os.path.lexists(self.entry_path(key))
            try:
                self._unlink_entry_and_record(key)
            except OSError as exc:
                refused = str(exc.filename or self.entry_path(key))
            with os.scandir(self.path) as it:  # the rest: temp files (the entry and record went together above)
                mine = [e.path for e in it if key_of(e.name) == key and is_keyed_name(e.name)
                        and not e.name.endswith((LOCK_SUFFIX, ENTRY_SUFFIX, RECORD_SUFFIX))]
            for path in mine:
                with contextlib.suppress(OSError):
                    os.unlink(path)  # mapped entries live on in the processes using them
        finally:
            lock.release(unlink=True)
        return refused if refused is not None else had_entry

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
                if files.interrupted and files.record is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(files.record.path)
                if files.record is None and files.entry is not None:
                    # Set aside as `verify --fix` does (kept a day in quarantine/): nothing vouches for it, and
                    # it may be someone's file of an entry's name.
                    quarantine(self.root, Path(files.entry.path), "an entry no record vouches for (gc)")
                    entry_left = os.path.lexists(files.entry.path)
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


# ==================== key ============================================================================================
#
# From an input to its cache key: the wasm's digest, the key, and digests remembered by file identity.
#
# A hit by path must not re-read a 50 MB wasm: its digest is remembered by the file's identity
# (device, inode, size, mtime_ns, ctime_ns) in this process and under ROOT/digests/ for the next
# one, so a hit costs a stat and one small read.
#


_DIGEST_CHUNK: Final = 8 << 20
_DIGEST_THREADS: Final = 4


def wasm_digest(data: bytes | bytearray | memoryview) -> str:
    """The input's digest: blake3 over the blake3s of its 8 MiB chunks (and its length).

    The chunks are hashed on up to 4 threads (blake3 releases the GIL). blake3's own
    multithreading starts a thread pool on first use, which in a fresh process costs as much as
    it saves (7-14 ms for 49 MB either way, measured); plain threads hash it in ~6.5 ms on 2
    cores. Fixed chunks keep the digest the same whatever the core count.
    """
    blake3 = blake3_hasher()
    view = memoryview(data).cast("B")
    size = view.nbytes
    chunks = [view[i : i + _DIGEST_CHUNK] for i in range(0, size, _DIGEST_CHUNK)] or [view]
    leaves: list[bytes] = [b""] * len(chunks)

    def hash_every(start: int, step: int) -> None:
        for i in range(start, len(chunks), step):
            leaves[i] = blake3(chunks[i]).digest()

    workers = min(_DIGEST_THREADS, os.cpu_count() or 1, len(chunks))
    import threading  # noqa: PLC0415 - only to hash a large input

    threads = [threading.Thread(target=hash_every, args=(i, workers), daemon=True) for i in range(1, workers)]
    for thread in threads:
        thread.start()
    hash_every(0, workers)
    for thread in threads:
        thread.join()
    return str(blake3(b"wasmcache-wasm-v1\0" + size.to_bytes(8, "little") + b"".join(leaves)).hexdigest())


def cache_key(fingerprint: str, kind: str, input_digest: str) -> str:
    """The entry key: engine fingerprint, what the input is (module, component, a serialized one) and its digest."""
    return str(blake3_hasher()(f"wasmcache-key-v1\0{fingerprint}\0{kind}\0{input_digest}".encode()).hexdigest())


def snapshot_key(fingerprint: str, kind: str, artifact_digest: str) -> str:
    """The key of the snapshot of a serialized input (`load_precompiled`, the drop-in's `deserialize_file`):
    its own engine's fingerprint, its kind, the digest of its bytes. It follows from the bytes alone, so a
    publication of the very same bytes finds that snapshot with one lookup (see `Namespace.publish`)."""
    return cache_key(fingerprint, f"{kind}:serialized", artifact_digest)


def artifact_section(data: bytes | bytearray | memoryview, kind: str | None = None) -> bytes | None:
    """The engine section of a Wasmtime artifact (of `kind`, if given), or None for anything else."""
    from ._elf import ENGINE_SECTION, artifact_kind, find_section  # noqa: PLC0415 - not on the hit path

    if artifact_kind(data) is None or (kind is not None and artifact_kind(data) != kind):
        return None
    try:
        return find_section(data, ENGINE_SECTION)
    except ValueError:
        return None


def artifact_fingerprint(data: bytes | bytearray | memoryview) -> str | None:
    """The fingerprint of the engine that wrote artifact `data` (its namespace), or None."""
    section = artifact_section(data)
    return None if section is None else fingerprint_of_section(section)


def read_input(name: str, path: str) -> tuple[bytes, Identity]:
    """The whole file and the identity it had while read; SourceError (one line) if it cannot be read."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise SourceError(f"{name}: not a regular file")
            data = f.read()
            after = Identity.of(os.fstat(f.fileno()))
    except OSError as exc:
        if isinstance(exc, SourceError):
            raise
        raise SourceError(f"{name}: cannot read: {exc.strerror or exc}") from None
    return data, after


def wasm_kind(head: bytes) -> Kind:
    """"module" or "component" from a wasm binary's first 8 bytes (`\\0asm` + version + layer).

    Layer 1 is a component whatever its version; anything else (a truncated header, an unknown
    version) is left for wasmtime's compiler to describe, as a module.
    """
    return "component" if head[6:8] == b"\x01\0" else "module"


def source_of(source: Source) -> tuple[str, str | None, bytes | memoryview | None]:
    """(the name messages use, the path or None, the bytes or None) of a load's input."""
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>", None, source
    if isinstance(source, (bytearray, memoryview)):
        # No copy on the hit path (5 ms for 49 MB): hash the caller's buffer; a miss copies it.
        view = memoryview(source).cast("B")
        return f"<{view.nbytes} bytes>", None, view
    if isinstance(source, (str, os.PathLike)):
        path = os.fsdecode(os.fspath(source))
        if "\0" in path:
            raise SourceError(f"{path!r}: a path cannot contain a NUL byte")
        return path, path, None
    raise TypeError(f"source: expected a path or bytes, got {type(source).__name__}")


class SourceDigests:
    """Digests of input files by identity, and the keys made of them: in this process, and under
    `root`/digests/ when given. A hit by path reads both and hashes nothing."""

    def __init__(self) -> None:
        self._known: dict[str, str] = {}
        self._forgotten: set[Identity] = set()  # identities whose memo proved wrong: read, never recalled
        self._guard = allocate_lock()

    def digest(self, name: str, path: str, root: Path | None, *, writable: bool) -> tuple[str, bytes | None]:
        """The digest of file `path`, and its bytes when they had to be read (a hit never reads them)."""
        digest, data, _ = self._remembered(name, path, root, writable=writable, artifact=False)
        return digest, data

    def digest_and_fingerprint(self, name: str, path: str, root: Path | None, *, writable: bool) -> tuple[
            str, bytes | None, str | None]:
        """For a serialized file: its digest, its bytes if read, and its own engine's fingerprint (None:
        not a Wasmtime artifact), remembered together."""
        return self._remembered(name, path, root, writable=writable, artifact=True)

    def key(self, derive: Callable[[str, str, str], str], fingerprint: str, kind: str, digest: str,
            root: Path | None, *, writable: bool, fresh: bool = False) -> str:
        """`derive(fingerprint, kind, digest)` (`cache_key` or `snapshot_key`), remembered like a digest
        (`fresh`: derived again, and remembered over what was)."""
        text = f"{derive.__name__}:{fingerprint}:{kind}:{digest}"
        known = None if fresh else self._recall(text, root, writable=writable)
        if known is not None:
            return known
        key = derive(fingerprint, kind, digest)
        self._keep(text, key, root, writable=writable)
        return key

    def forget(self, path: str, *, artifact: bool) -> None:
        """Forget the digest remembered for file `path` as it is now (in this process; its memo file is
        written anew when the digest is computed again)."""
        try:
            identity = Identity.of(os.stat(path))
        except OSError:
            return
        with self._guard:
            self._known.pop(_identity_text(identity, artifact=artifact), None)
        self._forgotten.add(identity)

    def _remembered(self, name: str, path: str, root: Path | None, *, writable: bool, artifact: bool) -> tuple[
            str, bytes | None, str | None]:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise SourceError(f"{name}: cannot read: {exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise SourceError(f"{name}: {what}, expected a .wasm file")
        identity = Identity.of(st)
        text = _identity_text(identity, artifact=artifact)
        believed = identity not in self._forgotten
        known = self._recall(text, root, writable=writable) if believed else None
        if known is None and root is not None and believed:
            known = _legacy_digest_memo(root, identity, artifact)
            if known is not None:
                self._keep(text, known, root, writable=writable)
        if known is not None:
            digest, _, remembered = known.partition(" ")
            return digest, None, (remembered if remembered != "-" else None) if artifact else None
        data, after = read_input(name, path)
        digest = wasm_digest(data)
        fingerprint = artifact_fingerprint(data) if artifact else None
        if after == identity:  # remember only what was read from a file that did not change under us
            self._keep(text, f"{digest} {fingerprint or '-'}" if artifact else digest, root, writable=writable)
        return digest, data, fingerprint

    # A memo: ROOT/digests/<memo_file_name(text)> holds "<text> <value>", `text` spelling out what is
    # remembered (a file's identity, or a key's inputs), `value` starting with a 64-hex digest or key.

    def _recall(self, text: str, root: Path | None, *, writable: bool) -> str | None:
        with self._guard:
            known = self._known.get(text)
        if known is not None or root is None:
            return known
        raw = read_small_file(f"{root}/{DIGESTS_DIR}/{memo_file_name(text)}", 512, trusted=True, mark_used=writable)
        if raw is None:
            return None
        found, _, value = raw.decode("ascii", "replace").partition(" ")
        if found != text or not is_key(value.partition(" ")[0]):
            return None
        with self._guard:
            self._known[text] = value
        return value

    def _keep(self, text: str, value: str, root: Path | None, *, writable: bool) -> None:
        with self._guard:
            self._known[text] = value
        if root is None or not writable:
            return
        path = root / DIGESTS_DIR / memo_file_name(text)
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            write_atomically(path, f"{text} {value}".encode())
        except OSError as exc:
            log.debug("wasmcache: cannot remember a digest in %s: %s", path, exc)


def _identity_text(identity: Identity, *, artifact: bool) -> str:
    """What a digest memo remembers a file by: its kind (`DIGEST_MEMO_KINDS`) and dev:ino:size:mtime:ctime."""
    return f"{'artifact' if artifact else 'wasm'}:{':'.join(map(str, identity))}"


def _legacy_digest_memo(root: Path, identity: Identity, artifact: bool) -> str | None:
    """A digest memo as versions before 2026-12-04 named it (blake3 of the identity): read when the memo of
    today's name is missing, so a root an older version filled (a read-only one above all) is not digested
    again in every process. It costs blake3's import, which the digest it spares would need anyway."""
    text = f"{'artifact:' if artifact else ''}{':'.join(map(str, identity))}"
    name = str(blake3_hasher()(text.encode()).hexdigest())
    raw = read_small_file(f"{root}/{DIGESTS_DIR}/{name[:32]}", 256, trusted=True)
    if raw is None:
        return None
    found, _, value = raw.decode("ascii", "replace").partition(" ")
    return value if found == name[32:48] and is_key(value.partition(" ")[0]) else None


# ==================== context ========================================================================================
#
# What a `ModuleCache` and its miss path share, handed to both explicitly: the root and what may be
# done with it, the engine (built on first use), the settings that bound waiting and size, the counters.
#
# Nothing here loads or publishes: the hit path (`_cache`), the miss path (`_miss`) and storage
# (`Namespace`) do that, each reading this one object rather than reaching into one another.
#


# How long a loader waits for another process compiling the same key before compiling itself.
DEFAULT_LOCK_TIMEOUT: Final = 900.0


class Place:
    """Where a key's entry lives: its namespace, and the engine that namespace is for.

    `section` None: not known yet (a snapshot found by its memo; the miss reads it from the artifact).
    `serialized`: the entry is a snapshot of a serialized input (its namespace is the artifact's own engine).
    A plain class, not a NamedTuple: building one of those costs every process that loads a module ~0.1 ms.
    """

    __slots__ = ("fingerprint", "namespace", "section", "serialized")

    def __init__(self, namespace: Namespace, section: bytes | None, fingerprint: str, *, serialized: bool) -> None:
        self.namespace = namespace
        self.section = section
        self.fingerprint = fingerprint
        self.serialized = serialized


class Counters:
    """The counters of one ModuleCache, safe to bump from any thread."""

    NAMES: Final = ("hits", "misses", "compiles", "remote_hits", "remote_misses", "uploads", "rejected", "substituted")

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._values = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


_said_read_only: set[str] = set()
_said_cannot_set_up: set[tuple[str, str]] = set()  # (root, why): a program making a cache per engine hears it once


class CacheContext:
    """A cache's root, engine, settings and counters. `disabled`: compile every time, remember nothing."""

    def __init__(self, root: str | os.PathLike[str] | None, *, engine: wasmtime.Engine | EngineSettings | None,
                 mode: Mode, max_size: int | str | None, lock_timeout: float, strict: bool, enabled: bool) -> None:
        if mode not in ("mmap", "memory"):
            raise ConfigError(f"mode={mode!r}: expected 'mmap' or 'memory'")
        self.root: Path = resolve_root(root)
        self.mode: Mode = mode
        self.max_size = resolve_max_size(max_size)
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) or not lock_timeout >= 0:
            raise ConfigError(f"lock_timeout={lock_timeout!r}: expected a number of seconds, 0 or more")
        self.lock_timeout = float(lock_timeout)
        self.strict = strict
        self.disabled = not enabled or disabled_by_environment()
        self.writable = False
        self.initialized = False  # the root carries our marker (memos may be read from it)
        self.setup_failure: str | None = None  # why the root could not be made or initialized, if so
        self.counters = Counters()
        self._engine_arg = engine
        self._engine: wasmtime.Engine | None = None
        self._engine_ref: ref[wasmtime.Engine] | None = None  # instead of the two above (hold_engine_weakly)
        self._identity: EngineIdentity | None = None
        self._fingerprint_hashed = False  # the identity's fingerprint was checked against its section
        self._namespace: Namespace | None = None
        self._namespaces_checked: set[str] = set()  # namespaces, digests/ and engines/ whose permissions were checked
        self._sections_checked: set[str] = set()  # namespaces whose engine file was compared (namespace_holds)
        self.bad_entries_said: set[tuple[str, Identity | None]] = set()  # (entry, identity) warned about once
        self._links_said: set[str] = set()  # namespaces found to be links (said once)
        self._guard = allocate_lock()
        if not self.disabled:
            self._open_root()

    @property
    def stores(self) -> bool:
        """Whether a miss may publish (lock, write): a writable root, not disabled."""
        return self.writable and not self.disabled

    @property
    def memo_root(self) -> Path | None:
        """Where input digests are remembered: an initialized root, and only while caching (and only if
        nobody else could write its digests/: a memo decides which entry a load maps)."""
        if not self.initialized or self.disabled or not self.memo_dir_usable(DIGESTS_DIR):
            return None
        return self.root

    def memo_dir_usable(self, name: str) -> bool:
        """ROOT/`name` (digests/, engines/) is absent or safe as a namespace is (checked once per cache)."""
        if name in self._namespaces_checked:
            return True
        path = self.root / name
        try:
            st = os.lstat(path)
        except OSError:
            return True  # not made yet: made by us, 0700
        if stat.S_ISLNK(st.st_mode):
            return False  # memos are never read or written through a link out of the root (doctor says so)
        if not self.safe(path, st):
            return False
        self._namespaces_checked.add(name)
        return True

    def _open_root(self) -> None:
        """Create or adopt the root; a root we cannot write still serves hits (read-only mode)."""
        verb = "create"
        try:
            existing: os.stat_result | None = os.stat(self.root)
        except FileNotFoundError:
            existing = None
        except NotADirectoryError:  # a file on its way: a mistaken path, refused as a root that is a file is
            raise NotACacheError(f"{self.root}: cannot be reached ({unreachable_reason(self.root)}); choose a "
                                 f"new or empty directory as the cache root ({_ROOT_SETTINGS})") from None
        except OSError:
            existing, verb = None, "reach"  # it may well exist: a directory on its way we may not enter
        if existing is not None and not self.safe(self.root, existing):
            return  # refused before anything is written into it
        try:
            initialize_root(self.root)
        except OSError as exc:
            if not has_marker(self.root):
                self.setup_failure = str(unreachable_reason(self.root) or exc.strerror or exc)
                said = (str(self.root), self.setup_failure)
                (log.debug if said in _said_cannot_set_up else log.warning)(  # once per process and cause
                    "wasmcache: cannot %s cache root %s (%s); nothing will be cached",
                    verb if existing is None else "initialize", self.root, self.setup_failure)
                _said_cannot_set_up.add(said)
                return
        if existing is None and not self.safe(self.root, os.stat(self.root)):
            return  # created just now (by us, or a racing process): check what is there
        self.initialized = True
        self.writable = os.access(self.root, os.W_OK)
        if not self.writable and str(self.root) not in _said_read_only:
            _said_read_only.add(str(self.root))  # once per process (the drop-in makes a cache per engine)
            log.info("wasmcache: %s cannot be written: serving hits, compiling misses in memory", self.root)

    def safe(self, path: Path, st: os.stat_result) -> bool:
        """Refuse (strict) or stop using (strict=False) a cache path that others could rewrite."""
        reason = unsafe_reason(st)
        if reason is None:
            return True
        return self.unsafe(path, reason)

    def unsafe(self, path: Path, reason: str) -> bool:
        message = (f"{path} {reason}: another user could plant native code that this process would run; "
                   f"fix: {unsafe_fix(path, reason)}")
        if self.strict:
            raise UnsafeCacheError(message)
        log.warning("wasmcache: %s (strict=False: compiling without the cache)", message)
        self.disabled = True
        self.writable = False
        return False

    def namespace_usable(self, namespace: Namespace) -> bool:
        """The namespace exists, is the root's own directory and nobody else could write it (checked once per
        cache)."""
        if namespace.name in self._namespaces_checked:
            return True
        try:
            namespace_stat = os.lstat(namespace.path)
        except OSError:
            return False  # no namespace yet: nothing to load
        if self._a_link(namespace, namespace_stat) or not self.safe(namespace.path, namespace_stat):
            return False
        self._namespaces_checked.add(namespace.name)
        return True

    def stores_in(self, namespace: Namespace) -> bool:
        """Whether a miss may publish into `namespace`: the cache stores, and the namespace is not a link (one
        that is not there yet is made by the publication)."""
        if not self.stores:
            return False
        try:
            return not self._a_link(namespace, os.lstat(namespace.path))
        except OSError:
            return True

    def _a_link(self, namespace: Namespace, st: os.stat_result) -> bool:
        """A link where a namespace belongs is never followed, like digests/, engines/ and quarantine/: what it
        points to may be anyone's, and gc, verify and `ls` never look there. Loads compile (said once per cache)."""
        if not stat.S_ISLNK(st.st_mode):
            return False
        if namespace.name not in self._links_said:
            self._links_said.add(namespace.name)
            log.warning("wasmcache: %s is a symbolic link, never followed: its engine's modules are compiled (a "
                        "program's own .cwasm files loaded as copies), not cached (`wasmcache doctor` says more)",
                        namespace.path)
        return True

    # --- the engine ---------------------------------------------------------------------------

    def hold_engine_weakly(self) -> None:
        """The drop-in's cache hangs on the program's engine: a strong reference back would make a cycle
        only the collector frees (a program with it off, or slow to run it, would keep every engine)."""
        engine = self.engine
        self._engine_ref = ref(engine)
        self._engine_arg = self._engine = None

    @property
    def engine(self) -> wasmtime.Engine:
        if self._engine_ref is not None:
            engine = self._engine_ref()
            if engine is None:
                raise CacheError("the engine of this cache is gone")
            return engine
        if self._engine is None:
            with self._guard:
                if self._engine is None:
                    self._engine = self._make_engine()
        return self._engine

    def _make_engine(self) -> wasmtime.Engine:
        import wasmtime  # noqa: PLC0415 - `import wasmcache` stays light

        arg = self._engine_arg
        # Memos live only inside an initialized root (written only where it is writable).
        memo = (EngineMemo(self.root / ENGINES_DIR, writable=self.writable)
                if self.initialized and self.memo_dir_usable(ENGINES_DIR) else None)
        if arg is None:
            return default_engine(memo)
        if isinstance(arg, wasmtime.Engine):  # the program's own (the drop-in's case)
            return arg
        from ._engine import EngineSettings  # noqa: PLC0415 - a process that loads with a given engine has no use for it

        if isinstance(arg, EngineSettings):
            return arg.build_with_memo(memo)
        raise ConfigError(f"engine: expected a wasmtime.Engine or EngineSettings, got {type(arg).__name__}")

    @property
    def engine_identity(self) -> EngineIdentity:
        if self._identity is None:
            self._identity = engine_identity(self.engine)
        return self._identity

    def namespace_holds(self, place: Place) -> bool:
        """Whether `place`'s namespace is its engine's: its `engine` file, if any, holds the section (one small read
        per namespace and cache, on the hit path). A fingerprint an engine memo gave wrongly would otherwise
        serve another configuration's code wherever wasmtime accepts it (NaN canonicalization, opt-level)."""
        if place.section is None or place.namespace.name in self._sections_checked:
            return True
        held = place.namespace.read_section(len(place.section) + 1)
        self._sections_checked.add(place.namespace.name)
        return held is None or held == place.section

    def fingerprint_corrected(self, place: Place) -> bool:
        """Whether `place` was chosen by a fingerprint that was not this engine's (a memo's, now corrected,
        see `correct_fingerprint`; hashed once per cache): the load must choose its place again."""
        if not self._fingerprint_hashed:
            self._fingerprint_hashed = True
            correct_fingerprint(self.engine_identity)
        return place.fingerprint != self.engine_identity.fingerprint

    @property
    def namespace(self) -> Namespace:
        """The namespace of this engine's entries."""
        fingerprint = self.engine_identity.fingerprint
        if self._namespace is None or self._namespace.name != namespace_name(fingerprint):
            self._namespace = Namespace.of(self.root, fingerprint)
        return self._namespace
