"""`ModuleCache`: the public API, the hit path and the miss path.

The whole safety argument of a hit, top-down in `_load` and `_load_entry`:

  source -> digest     path inputs: digest remembered by file identity (dev, ino, size, mtime, ctime)
         -> key        blake3(engine fingerprint, module|component, input digest)
         -> entry      ROOT/ns-<fingerprint>/<key>.cwasm, opened O_NOFOLLOW, never for writing
         -> check      fstat of *that open fd* == the identity recorded after publication;
                       else full content digest + engine section, then re-record or quarantine
                       (`_entry.check_entry`, the same check `verify` and `push` make)
         -> map        wasmtime maps /proc/self/fd/N: the inode we checked, not whatever the path
                       names a microsecond later

Entries are only ever replaced by rename, so a process keeps the inode it mapped even while
others clear, collect, quarantine or republish the key.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from . import _native
from ._engine import EngineSettings
from ._entry import CheckedEntry, check_entry, quarantine_if_unchanged
from ._errors import (
    CompileError,
    ConfigError,
    EntryChangedError,
    EntryRefusedError,
    SourceError,
    UnsafeCacheError,
    UntrustedEntryError,
    wasmtime_reason,
)
from ._fingerprint import EngineIdentity, EngineMemo, default_engine, engine_identity
from ._fs import read_fd
from ._key import SourceDigests, artifact_fingerprint, cache_key, wasm_digest
from ._layout import (
    ENGINES_DIR,
    GC_LOCK_NAME,
    entry_path,
    namespace_name,
    record_path,
)
from ._log import log
from ._miss import Counters, MissPath, Place
from ._record import Identity, write_record
from ._remote._settings import resolve_remote_settings
from ._root import (
    disabled_by_environment,
    has_marker,
    initialize_root,
    read_usage,
    resolve_max_size,
    resolve_root,
    unsafe_fix,
    unsafe_reason,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import wasmtime
    from wasmtime.component import Component

    from ._maintenance import EntryInfo, GcReport
    from ._verify import VerifyReport


Mode = Literal["mmap", "memory"]
Kind = Literal["module", "component"]
Source = str | os.PathLike[str] | bytes | bytearray | memoryview

# A hit refreshes its record's mtime (the LRU clock) at most this often: one utime per minute
# per entry, not one metadata write per load.
_TOUCH_INTERVAL: Final = 60.0
# How long a loader waits for another process compiling the same key before compiling itself.
_DEFAULT_LOCK_TIMEOUT: Final = 900.0


class CacheStats(NamedTuple):
    """Counters of this `ModuleCache` object, plus what the whole root holds on disk (from its usage
    record: exact after a gc or verify, approximate between)."""

    hits: int
    misses: int
    compiles: int
    entries: int
    size_bytes: int
    remote_hits: int = 0
    remote_misses: int = 0
    uploads: int = 0
    rejected: int = 0  # remote artifacts refused (bad or untrusted signature, wrong digest or engine)


# Modules already loaded in this process, per engine object, then (root, mode, kind, key): the
# same key loaded twice through the same root and mode with the same Engine returns the same
# module (a Module only works with its own Engine). Another root still gets its entry; "memory"
# never returns a mapped module. Weak on the engine (never keeps one alive), strong on the
# modules: they live as long as their engine, and are served again only while their entry is the
# file they map (an in-place rewrite, which no writer of ours does, is loaded afresh). A weak
# module here was handed out while wasmtime's __del__ was freeing its native handle in another
# thread (the GIL is released in that C call, and the weak reference is cleared only after
# __del__): a use-after-free that the drop-in's threads hit.
class _Loaded(NamedTuple):
    """A module of the per-process memo, and the identity of the entry it maps (None: a copy)."""

    module: Any
    entry: str
    identity: Identity | None

    @classmethod
    def of(cls, module: Any, entry: Path, mode: str, mapped: Identity | None) -> _Loaded:
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


_loaded_by_engine: weakref.WeakKeyDictionary[Any, dict[tuple[str, str, str, str], _Loaded]] = (
    weakref.WeakKeyDictionary()
)
_loaded_guard = threading.Lock()

# Linux's /proc, else macOS and the BSDs' /dev/fd: a path that opens the very file behind an fd.
_FD_DIR: Final = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"


class ModuleCache:
    """A crash-safe, content-addressed cache of compiled Wasmtime modules and components.

    ``root=None`` uses ``$WASMCACHE_DIR`` or the platform user cache directory (made absolute once).
    ``engine`` is any `wasmtime.Engine` (or `EngineSettings` to build one, validated); ``None`` =
    ``wasmtime.Engine()``. ``mode="mmap"`` maps entries (fast, pages shared between processes);
    ``"memory"`` reads, checks and deserializes a copy, holding no mapping. ``max_size`` bounds the
    whole root (bytes or ``"2G"``; ``None`` = ``$WASMCACHE_MAX_SIZE`` or 4 GiB); the bound is
    enforced after publications, never by a scan on the hit path.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        engine: wasmtime.Engine | EngineSettings | None = None,
        mode: Mode = "mmap",
        max_size: int | str | None = None,
        lock_timeout: float = _DEFAULT_LOCK_TIMEOUT,
        strict: bool = True,
        remote: str | Literal[False] | None = None,
        signing_key: str | os.PathLike[str] | None = None,
        trusted_keys: Sequence[str | os.PathLike[str]] | None = None,
    ) -> None:
        if mode not in ("mmap", "memory"):
            raise ConfigError(f"mode={mode!r}: expected 'mmap' or 'memory'")
        self.root: Path = resolve_root(root)
        self.mode: Mode = mode
        self.max_size = resolve_max_size(max_size)
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) or not lock_timeout >= 0:
            raise ConfigError(f"lock_timeout={lock_timeout!r}: expected a number of seconds, 0 or more")
        self.lock_timeout = float(lock_timeout)
        self.strict = strict
        self.disabled = disabled_by_environment()
        self.writable = False
        self._initialized = False  # the root carries our marker (memos may be read from it)
        self._engine_arg = engine
        self._engine: wasmtime.Engine | None = None
        self._identity: EngineIdentity | None = None
        self._namespace_dir: Path | None = None
        self._guard = threading.Lock()
        self._digests = SourceDigests()
        self._counters = Counters()
        self._namespaces_checked: set[str] = set()  # names of the namespaces whose permissions were checked
        self._miss = MissPath(self, self._counters, resolve_remote_settings(remote, signing_key, trusted_keys),
                              self._load_entry)
        if not self.disabled:
            self._open_root()

    def _open_root(self) -> None:
        """Create or adopt the root; a root we cannot write still serves hits (read-only mode)."""
        try:
            existing: os.stat_result | None = os.stat(self.root)
        except OSError:
            existing = None
        if existing is not None and not self._safe(self.root, existing):
            return  # refused before anything is written into it
        try:
            initialize_root(self.root)
        except OSError as exc:
            if not has_marker(self.root):
                log.warning("wasmcache: cannot create cache root %s (%s); compiling without a cache",
                            self.root, exc.strerror or exc)
                return
        if existing is None and not self._safe(self.root, os.stat(self.root)):
            return  # created just now (by us, or a racing process): check what is there
        self._initialized = True
        self.writable = os.access(self.root, os.W_OK)
        if not self.writable:
            log.info("wasmcache: %s is read-only: serving hits, compiling misses in memory", self.root)

    def _safe(self, path: Path, st: os.stat_result) -> bool:
        """Refuse (strict) or stop using (strict=False) a cache path that others could rewrite."""
        reason = unsafe_reason(st)
        if reason is None:
            return True
        return self._unsafe(path, reason)

    def _unsafe(self, path: Path, reason: str) -> bool:
        message = (f"{path} {reason}: another user could plant native code that this process would run; "
                   f"fix: {unsafe_fix(path, reason)}")
        if self.strict:
            raise UnsafeCacheError(message)
        log.warning("wasmcache: %s (strict=False: compiling without the cache)", message)
        self.disabled = True
        self.writable = False
        return False

    # --- engine ----------------------------------------------------------------------------------

    @property
    def engine(self) -> wasmtime.Engine:
        """The `wasmtime.Engine` every module of this cache is compiled for."""
        if self._engine is None:
            with self._guard:
                if self._engine is None:
                    self._engine = self._make_engine()
        return self._engine

    def _make_engine(self) -> wasmtime.Engine:
        import wasmtime  # noqa: PLC0415 - `import wasmcache` stays light

        arg = self._engine_arg
        # Memos live only inside an initialized root (written only where it is writable).
        memo = EngineMemo(self.root / ENGINES_DIR, writable=self.writable) if self._initialized else None
        if arg is None:
            return default_engine(memo)
        if isinstance(arg, EngineSettings):
            return arg.build_with_memo(memo)
        if not isinstance(arg, wasmtime.Engine):
            raise ConfigError(f"engine: expected a wasmtime.Engine or EngineSettings, got {type(arg).__name__}")
        return arg

    @property
    def engine_identity(self) -> EngineIdentity:
        if self._identity is None:
            self._identity = engine_identity(self.engine)
        return self._identity

    @property
    def namespace_dir(self) -> Path:
        if self._namespace_dir is None:
            self._namespace_dir = self.root / namespace_name(self.engine_identity.fingerprint)
        return self._namespace_dir

    # --- public loading API ------------------------------------------------------------------------

    def load(self, source: Source) -> wasmtime.Module:
        """A `wasmtime.Module` for `source` (a path, or the wasm bytes), from the cache or compiled."""
        module: wasmtime.Module = self._load(source, "module")
        return module

    def load_component(self, source: Source) -> Component:
        """A `wasmtime.component.Component` for `source`, from the cache or compiled."""
        component: Component = self._load(source, "component")
        return component

    def load_precompiled(self, source: Source, kind: Kind = "module") -> Any:
        """A Module (or Component) from serialized bytes (`serialize()` output), never mapping `source`.

        The bytes are snapshotted into the cache as an immutable, checked entry (remembered by the
        file's identity: a repeat costs a stat and a checked map) and that entry is mapped, so a
        program that rewrites its own file in place cannot crash the module. An artifact of another
        engine configuration, or a read-only or disabled cache, gets an in-memory copy instead.
        What wasmtime refuses raises `CompileError`, with wasmtime's exception as `wasmtime_error`.
        """
        if kind not in ("module", "component"):
            raise ConfigError(f"kind={kind!r}: expected 'module' or 'component'")
        return self._load(source, kind, serialized=True)

    def key_for(self, source: Source, kind: Kind = "module") -> str:
        """The cache key `source` has under this cache's engine (for `inspect` and tooling)."""
        name, path, data = self._source(source)
        digest, _ = self._digest(name, path, data)
        return cache_key(self.engine_identity.fingerprint, kind, digest)

    def entry_path(self, key: str) -> Path:
        return entry_path(self.namespace_dir, key)

    # --- the hit path --------------------------------------------------------------------------

    def _load(self, source: Source, kind: Kind, *, serialized: bool = False) -> Any:
        name, path, data = self._source(source)
        if serialized:
            # A snapshot lives in the namespace of the artifact's own engine section, remembered
            # with its digest: no probe of this engine. wasmtime's own check at the map decides
            # whether this engine may load it, as it would for the program's own file.
            digest, fingerprint, data = self._artifact_digest(name, path, data)
            if fingerprint is None:  # not a Wasmtime artifact: wasmtime's own error, nothing cached
                return self._miss.refuse(name, path, data, kind)
            place = Place(self.root / namespace_name(fingerprint), None, serialized=True)
            key = cache_key(fingerprint, f"{kind}:serialized", digest)
        else:
            digest, data = self._digest(name, path, data)
            identity = self.engine_identity
            place = Place(self.namespace_dir, identity.section, serialized=False)
            key = cache_key(identity.fingerprint, kind, digest)
        if self.disabled:  # $WASMCACHE_DISABLE: compile every time, remember nothing, not even here
            self._counters.add("misses")
            return self._miss.load(name, path, data, place, key, kind, digest)
        memo_key = (str(self.root), self.mode, kind, key)
        loaded = self._loaded_modules()
        with _loaded_guard:
            remembered = loaded.get(memo_key)
        module = remembered.module if remembered is not None and remembered.still_valid() else None
        mapped: Identity | None = None
        try:
            if module is None:
                module, mapped = self._load_checked(place, key, kind)
            if module is not None:
                self._counters.add("hits")
                log.info("wasmcache: hit %s (%s)", name, kind)
            else:
                self._counters.add("misses")
                module = self._miss.load(name, path, data, place, key, kind, digest)
        except EntryRefusedError as refused:  # a snapshot this engine may not load: as wasmtime says
            raise CompileError(name, str(refused), refused.wasmtime_error) from None
        with _loaded_guard:
            # Threads racing on one key all return the first module stored (one per engine and key).
            current = loaded.get(memo_key)
            if current is not None and current.module is not module and current.still_valid():
                return current.module
            loaded[memo_key] = _Loaded.of(module, entry_path(place.namespace, key), self.mode, mapped)
            return module

    def _loaded_modules(self) -> dict[tuple[str, str, str, str], _Loaded]:
        with _loaded_guard:
            loaded = _loaded_by_engine.get(self.engine)
            if loaded is None:
                loaded = _loaded_by_engine[self.engine] = {}
            return loaded

    def _load_entry(self, place: Place, key: str, kind: Kind, *, locked: bool = False) -> Any:
        """The checked entry for `key` in `place`, deserialized; None on a miss (bad entries are quarantined).

        `locked`: the caller holds the key's lock (flock is per open file: taking it again here on
        another fd would wait for ourselves). A snapshot this engine may not load raises
        EntryRefusedError: the entry is fine, the engine is another one.
        """
        return self._load_checked(place, key, kind, locked=locked)[0]

    def _load_checked(self, place: Place, key: str, kind: Kind, *, locked: bool = False) -> tuple[
            Any, Identity | None]:
        """`_load_entry`, and the identity of the entry it mapped (the per-process memo keeps it)."""
        namespace = place.namespace
        if place.namespace_name not in self._namespaces_checked:
            try:
                namespace_stat = os.stat(namespace)
            except OSError:
                return None, None  # no namespace yet: nothing to load
            if not self._safe(namespace, namespace_stat):
                return None, None
            self._namespaces_checked.add(place.namespace_name)
        try:
            checked = check_entry(namespace, key, kind=kind, section=place.section)
        except UntrustedEntryError as bad:
            self._repair(namespace, key, bad.seen, bad.detail, locked=locked)
            return None, None
        if checked is None:
            return None, None
        try:
            reason = unsafe_reason(checked.stat)  # the path is formatted only for the message
            if reason is not None and not self._unsafe(entry_path(namespace, key), reason):
                return None, None
            if checked.content_checked:
                self._rerecord(namespace, key, checked)
            try:
                module = self._deserialize(checked, kind)
            except EntryChangedError:
                log.warning("wasmcache: %s changed while being read; loading it again", entry_path(namespace, key))
                return None, None
            except EntryRefusedError as refused:
                if place.serialized:
                    raise
                self._repair(namespace, key, Identity.of(checked.stat), f"wasmtime refused to load it: {refused}",
                             locked=locked)
                return None, None
        finally:
            checked.close()
        if time.time() - checked.record_stat.st_mtime > _TOUCH_INTERVAL:
            with contextlib.suppress(OSError):
                os.utime(record_path(namespace, key))  # the LRU clock lives on the record, not the entry
        return module, Identity.of(checked.stat)

    def _rerecord(self, namespace: Path, key: str, checked: CheckedEntry) -> None:
        """Identity changed (copied root, restore) but the content checked out: record the new one."""
        log.info("wasmcache: entry %s moved or copied; content verified, identity re-recorded", key[:16])
        if self.writable:
            with contextlib.suppress(OSError):
                write_record(record_path(namespace, key), checked.record._replace(identity=Identity.of(checked.stat)))

    def _deserialize(self, checked: CheckedEntry, kind: Kind) -> Any:
        import wasmtime  # noqa: PLC0415

        try:
            if self.mode == "mmap":
                # Map the inode behind our checked fd, not whatever the entry's path names by now.
                return _native.deserialize_file(kind, self.engine, f"{_FD_DIR}/{checked.fd}")
            try:
                data = read_fd(checked.fd, checked.stat.st_size)
                changed = Identity.of(os.fstat(checked.fd)) != Identity.of(checked.stat)
            except OSError as exc:
                raise EntryChangedError from exc
            if changed:
                raise EntryChangedError
            return _native.deserialize(kind, self.engine, data)
        except wasmtime.WasmtimeError as exc:
            raise EntryRefusedError(wasmtime_reason(exc), exc) from None

    def _repair(self, namespace: Path, key: str, seen: Identity | None, reason: str, *, locked: bool = False) -> None:
        """One warning, then quarantine the entry if it is still the file judged bad (see `_entry`)."""
        log.warning("wasmcache: bad cache entry %s: %s; setting it aside and recompiling", entry_path(namespace, key),
                    reason)
        if self.writable:
            quarantine_if_unchanged(self.root, namespace, key, seen, reason, lock_held=locked)

    # --- sources and digests ----------------------------------------------------------------------

    @staticmethod
    def _source(source: Source) -> tuple[str, str | None, bytes | memoryview | None]:
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

    def _digest(self, name: str, path: str | None, data: bytes | memoryview | None) -> tuple[
            str, bytes | memoryview | None]:
        """The input's digest (for a path, remembered by file identity: a hit never re-reads it)."""
        if path is None:
            if data is None:  # _source returns a path or the bytes, never neither
                raise TypeError("source: expected a path or bytes")
            return wasm_digest(data), data
        memo_root = self.root if self._initialized and not self.disabled else None
        return self._digests.digest(name, path, memo_root, writable=self.writable and not self.disabled)

    def _artifact_digest(self, name: str, path: str | None, data: bytes | memoryview | None) -> tuple[
            str, str | None, bytes | memoryview | None]:
        """A serialized input's digest and its own engine fingerprint (None: not a Wasmtime artifact)."""
        if path is None:
            if data is None:
                raise TypeError("source: expected a path or bytes")
            return wasm_digest(data), artifact_fingerprint(data), data
        memo_root = self.root if self._initialized and not self.disabled else None
        digest, data, fingerprint = self._digests.digest_and_fingerprint(
            name, path, memo_root, writable=self.writable and not self.disabled)
        return digest, fingerprint, data

    # --- management -------------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        """This object's counters and the root's usage record (one small read: no scan)."""
        usage = None if self.disabled else read_usage(self.root)
        count = self._counters.snapshot()
        return CacheStats(count["hits"], count["misses"], count["compiles"], usage.entries if usage else 0,
                          usage.size_bytes if usage else 0, count["remote_hits"], count["remote_misses"],
                          count["uploads"], count["rejected"] + self._miss.rejected)

    def gc(self, max_size: int | str | None = None) -> GcReport:
        """Evict least recently used entries (whole root) down to `max_size`; reap dead writers' temp files."""
        from ._maintenance import collect_garbage_locked  # noqa: PLC0415

        limit = self.max_size if max_size is None else resolve_max_size(max_size)
        return collect_garbage_locked(self.root, limit)

    def clear(self) -> int:
        """Remove every entry of every namespace; returns how many entries were removed."""
        from ._maintenance import clear_root  # noqa: PLC0415

        with _loaded_guard:
            _loaded_by_engine.clear()
        return clear_root(self.root)

    def verify(self, fix: bool = False) -> VerifyReport:
        """Check every entry against its record and namespace; `fix=True` quarantines what is bad."""
        from ._verify import verify_root  # noqa: PLC0415

        return verify_root(self.root, fix=fix)

    def entries(self) -> list[EntryInfo]:
        """Every entry of every namespace under the root, least recently used first."""
        from ._maintenance import list_entries  # noqa: PLC0415

        return list_entries(self.root)

    def __repr__(self) -> str:
        return f"ModuleCache(root={str(self.root)!r}, mode={self.mode!r}, max_size={self.max_size})"

_GC_LOCK: Final = GC_LOCK_NAME  # for tools that want the collector's lock file name
