"""`ModuleCache`: the hit path, the miss path and the counters.

The whole safety argument of a hit, top-down in `_load` and `_load_entry`:

  source -> digest     path inputs: digest remembered by file identity (dev, ino, size, mtime, ctime)
         -> key        blake3(engine fingerprint, module|component, wasm digest)
         -> entry      ROOT/ns-<fingerprint>/<key>.cwasm, opened O_NOFOLLOW, never for writing
         -> check      fstat of *that open fd* == the identity recorded after publication;
                       else full content digest + engine section, then re-record or quarantine
         -> map        wasmtime maps /proc/self/fd/N: the inode we checked, not whatever the path
                       names a microsecond later

Entries are only ever replaced by rename, so a process keeps the inode it mapped even while
others clear, collect, quarantine or republish the key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

import blake3

from ._elf import ENGINE_SECTION, find_section
from ._engine import EngineIdentity, EngineSettings, _wasmtime_version, default_engine, engine_identity
from ._errors import CacheError, CompileError, ConfigError, NotACacheError, UnsafeCacheError
from ._layout import (
    ENTRY_SUFFIX,
    NAMESPACE_ENGINE_FILE,
    cache_key,
    default_max_size,
    default_root,
    has_marker,
    initialize_root,
    namespace_name,
    parse_size,
    unsafe_fix,
    unsafe_reason,
)
from ._store import (
    O_CLOEXEC,
    O_NOFOLLOW,
    Identity,
    KeyLock,
    Record,
    digest_fd,
    lock_path,
    publish_atomically,
    quarantine,
    read_fd,
    read_record,
    record_path,
    write_record,
    write_small_file_atomically,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    import wasmtime
    from wasmtime.component import Component

    from ._maintenance import EntryInfo, GcReport, VerifyReport
    from ._remote import RemoteTier

log = logging.getLogger("wasmcache")

Mode = Literal["mmap", "memory"]
Kind = Literal["module", "component"]
Source = str | os.PathLike[str] | bytes | bytearray | memoryview

# A hit refreshes its record's mtime (the LRU clock) at most this often: one utime per minute
# per entry, not one metadata write per load.
_TOUCH_INTERVAL: Final = 60.0
# How long a loader waits for another process compiling the same key before compiling itself.
_DEFAULT_LOCK_TIMEOUT: Final = 900.0
_USAGE_RECOUNT_INTERVAL: Final = 24 * 3600.0


class SourceError(CacheError, OSError):
    """The wasm input could not be read."""


class CacheStats(NamedTuple):
    """Counters of this `ModuleCache` object, plus what the whole root holds on disk now."""

    hits: int
    misses: int
    compiles: int
    entries: int
    size_bytes: int
    remote_hits: int = 0
    remote_misses: int = 0
    uploads: int = 0
    rejected: int = 0  # remote artifacts refused (bad or untrusted signature, wrong digest or engine)


# Modules already loaded in this process, per engine object and (kind, key): the same key loaded
# twice with the same Engine returns the same module (a Module only works with its own Engine).
# Weak on both sides, so this never keeps an engine or a module alive.
_loaded_by_engine: weakref.WeakKeyDictionary[Any, weakref.WeakValueDictionary[tuple[str, str], Any]] = (
    weakref.WeakKeyDictionary()
)
_loaded_guard = threading.Lock()


def _remote_settings(
    remote: str | Literal[False] | None,
    signing_key: str | os.PathLike[str] | None,
    trusted_keys: Sequence[str | os.PathLike[str]] | None,
) -> tuple[str, str | None, list[str]] | None:
    """The remote tier's settings from arguments, else $WASMCACHE_REMOTE & co.; checked, not loaded.

    ``remote=False`` means no remote tier, whatever the environment says.
    """
    if remote is False:
        return None
    url = remote if remote is not None else os.environ.get("WASMCACHE_REMOTE") or None
    if url is None:
        return None
    if signing_key is None:
        signing_key = os.environ.get("WASMCACHE_SIGNING_KEY") or None
    if trusted_keys is None:
        trusted_keys = [p for p in os.environ.get("WASMCACHE_TRUSTED_KEYS", "").split(os.pathsep) if p]
    if not url.startswith("s3://") or len(url) <= len("s3://"):
        raise ConfigError(f"remote {url!r}: expected s3://BUCKET[/PREFIX]")
    if not trusted_keys:
        raise ConfigError(
            f"remote {url}: no trusted public keys; a compiled module is native code, so artifacts are loaded "
            "only when signed by a key you trust. Pass trusted_keys=[...] or set $WASMCACHE_TRUSTED_KEYS."
        )
    return url, (os.fspath(signing_key) if signing_key is not None else None), [os.fspath(k) for k in trusted_keys]


_DIGEST_CHUNK: Final = 8 << 20
_DIGEST_THREADS: Final = 4


def wasm_digest(data: bytes | memoryview) -> str:
    """The wasm's digest: blake3 over the blake3s of its 8 MiB chunks (and its length).

    The chunks are hashed on up to 4 threads (blake3 releases the GIL). blake3's own
    multithreading starts a thread pool on first use, which in a fresh process costs as much as
    it saves (7-14 ms for 49 MB either way, measured); plain threads hash it in ~6.5 ms on 2
    cores. Fixed chunks keep the digest the same whatever the core count.
    """
    view = memoryview(data).cast("B")
    size = view.nbytes
    chunks = [view[i : i + _DIGEST_CHUNK] for i in range(0, size, _DIGEST_CHUNK)] or [view]
    leaves: list[bytes] = [b""] * len(chunks)

    def hash_every(start: int, step: int) -> None:
        for i in range(start, len(chunks), step):
            leaves[i] = blake3.blake3(chunks[i]).digest()

    workers = min(_DIGEST_THREADS, os.cpu_count() or 1, len(chunks))
    threads = [threading.Thread(target=hash_every, args=(i, workers), daemon=True) for i in range(1, workers)]
    for thread in threads:
        thread.start()
    hash_every(0, workers)
    for thread in threads:
        thread.join()
    return blake3.blake3(b"wasmcache-wasm-v1\0" + size.to_bytes(8, "little") + b"".join(leaves)).hexdigest()


def _compiled_class(kind: Kind) -> Any:
    """wasmtime.Module, or Component (whose import costs ~10 ms: only when a component is loaded)."""
    if kind == "module":
        import wasmtime  # noqa: PLC0415

        return wasmtime.Module
    from wasmtime.component import Component  # noqa: PLC0415

    return Component


# Linux's /proc, else macOS and the BSDs' /dev/fd: a path that opens the very file behind an fd.
_FD_DIR: Final = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"


def _fd_path(fd: int) -> str:
    return f"{_FD_DIR}/{fd}"


class ModuleCache:
    """A crash-safe, content-addressed cache of compiled Wasmtime modules and components.

    ``root=None`` uses ``$WASMCACHE_DIR`` or the platform user cache directory. ``engine`` is any
    `wasmtime.Engine` (or `EngineSettings` to build one, validated); ``None`` = ``wasmtime.Engine()``.
    ``mode="mmap"`` maps entries (fast, pages shared between processes); ``"memory"`` reads,
    checks and deserializes a copy, holding no mapping. ``max_size`` bounds the whole root
    (bytes or ``"2G"``; ``None`` = ``$WASMCACHE_MAX_SIZE`` or 4 GiB); the bound is enforced after
    publications, never by a scan on the hit path.
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
        self.root = Path(root).expanduser() if root is not None else default_root()
        if "\0" in str(self.root):
            raise ConfigError(f"cache root {str(self.root)!r}: a path cannot contain a NUL byte")
        self.mode: Mode = mode
        self.max_size = default_max_size() if max_size is None else parse_size(max_size)
        self.lock_timeout = lock_timeout
        self.disabled = os.environ.get("WASMCACHE_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")
        self._engine_arg = engine
        self._engine: wasmtime.Engine | None = None
        self._identity: EngineIdentity | None = None
        self._guard = threading.Lock()
        self._digests: dict[Identity, str] = {}
        self._hits = self._misses = self._compiles = 0
        self._remote_hits = self._remote_misses = self._uploads = self._rejected = 0
        self.writable = False
        self.strict = strict
        self._namespace_checked = False
        self._remote: RemoteTier | None = None
        self._remote_settings = _remote_settings(remote, signing_key, trusted_keys)
        if not self.disabled:
            self._open_root()

    def _open_root(self) -> None:
        """Create or adopt the root; a root we cannot write still serves hits (read-only mode)."""
        try:
            initialize_root(self.root)
        except NotACacheError:
            raise
        except OSError as exc:
            if not has_marker(self.root):
                log.warning("wasmcache: cannot create cache root %s (%s); compiling without a cache",
                            self.root, exc.strerror or exc)
                return
        if not self._safe(self.root, os.stat(self.root)):
            return
        self.writable = os.access(self.root, os.W_OK)
        if not self.writable:
            log.info("wasmcache: %s is read-only: serving hits, compiling misses in memory", self.root)

    def _safe(self, path: Path, st: os.stat_result) -> bool:
        """Refuse (strict) or stop using (strict=False) a cache path that others could rewrite."""
        reason = unsafe_reason(st)
        if reason is None:
            return True
        message = (f"{path} {reason}: another user could plant native code that this process would run; "
                   f"fix: {unsafe_fix(path, reason)}")
        if self.strict:
            raise UnsafeCacheError(message)
        log.warning("wasmcache: %s (strict=False: compiling without the cache)", message)
        self.disabled = True
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
        memo = self.root / "engines" if self.writable or has_marker(self.root) else None
        if arg is None:
            return default_engine(memo if not self.disabled else None)
        if isinstance(arg, EngineSettings):
            return arg.build(memo_dir=memo if self.writable else None)
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
        return self.root / namespace_name(self.engine_identity.fingerprint)

    # --- public loading API ------------------------------------------------------------------------

    def load(self, source: Source) -> wasmtime.Module:
        """A `wasmtime.Module` for `source` (a path, or the wasm bytes), from the cache or compiled."""
        module: wasmtime.Module = self._load(source, "module")
        return module

    def load_component(self, source: Source) -> Component:
        """A `wasmtime.component.Component` for `source`, from the cache or compiled."""
        component: Component = self._load(source, "component")
        return component

    def key_for(self, source: Source, kind: Kind = "module") -> str:
        """The cache key `source` has under this cache's engine (for `inspect` and tooling)."""
        name, path, data = self._source(source)
        digest, _ = self._wasm_digest(name, path, data)
        return cache_key(self.engine_identity.fingerprint, kind, digest)

    def entry_path(self, key: str) -> Path:
        return self.namespace_dir / f"{key}{ENTRY_SUFFIX}"

    # --- the hit path --------------------------------------------------------------------------

    def _load(self, source: Source, kind: Kind) -> Any:
        name, path, data = self._source(source)
        digest, data = self._wasm_digest(name, path, data)
        identity = self.engine_identity
        key = cache_key(identity.fingerprint, kind, digest)
        loaded = self._loaded_modules()
        with _loaded_guard:
            module = loaded.get((kind, key))
        if module is not None:
            with self._guard:
                self._hits += 1
            return module
        module = None if self.disabled else self._load_entry(key, kind)
        if module is not None:
            with self._guard:
                self._hits += 1
        else:
            with self._guard:
                self._misses += 1
            module = self._compile_and_publish(name, path, data, key, kind, digest)
        with _loaded_guard:
            # Threads racing on one key all return the first module stored (one per engine and key).
            return loaded.setdefault((kind, key), module)

    def _loaded_modules(self) -> weakref.WeakValueDictionary[tuple[str, str], Any]:
        with _loaded_guard:
            loaded = _loaded_by_engine.get(self.engine)
            if loaded is None:
                loaded = _loaded_by_engine[self.engine] = weakref.WeakValueDictionary()
            return loaded

    def _load_entry(self, key: str, kind: Kind, *, locked: bool = False) -> Any:
        """The checked entry for `key`, deserialized; None on a miss (bad entries are quarantined).

        `locked`: the caller holds the key's lock (flock is per open file: taking it again here on
        another fd would wait for ourselves).
        """
        namespace = self.namespace_dir
        if not self._namespace_checked:
            try:
                namespace_stat = os.stat(namespace)
            except OSError:
                return None  # no namespace yet: nothing to load
            if not self._safe(namespace, namespace_stat):
                return None
            self._namespace_checked = True
        found = read_record(record_path(namespace, key))
        if found is None:
            return None
        record, record_stat = found
        entry = namespace / f"{key}{ENTRY_SUFFIX}"
        if record.key != key or record.kind != kind:
            self._repair(key, None, f"record does not belong to key {key}", locked=locked)
            return None
        try:
            fd = os.open(entry, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:  # ELOOP: a symlink where an entry should be; EACCES ...
            self._repair(key, None, f"cannot open entry safely: {exc.strerror}", locked=locked)
            return None
        try:
            st = os.fstat(fd)
            seen = Identity.of(st)
            if not stat.S_ISREG(st.st_mode):
                self._repair(key, seen, "entry is not a regular file", locked=locked)
                return None
            if not self._safe(entry, st):
                return None
            if record.identity != seen and not self._verify_content(fd, record, key, seen, locked=locked):
                return None
            module = self._deserialize(fd, st, kind, entry)
            if module is None:
                self._repair(key, seen, "wasmtime refused to load the entry", locked=locked)
                return None
        finally:
            os.close(fd)
        if time.time() - record_stat.st_mtime > _TOUCH_INTERVAL:
            with contextlib.suppress(OSError):
                os.utime(record_path(namespace, key))  # the LRU clock lives on the record, not the entry
        return module

    def _verify_content(self, fd: int, record: Record, key: str, seen: Identity, *, locked: bool) -> bool:
        """Identity changed (copied root, restore, tampering): trust only a full content check."""
        try:
            digest, size = digest_fd(fd)
            section = find_section(fd, ENGINE_SECTION)
        except (OSError, ValueError) as exc:
            self._repair(key, seen, f"entry unreadable or not a Wasmtime file: {exc}", locked=locked)
            return False
        if size != record.size or digest != record.content_digest:
            self._repair(key, seen, "entry content does not match its record (rewritten or swapped)", locked=locked)
            return False
        if section != self.engine_identity.section:
            self._repair(key, seen, "entry was compiled by another engine configuration", locked=locked)
            return False
        log.info("wasmcache: entry %s moved or copied; content verified, identity re-recorded", key[:16])
        if self.writable:
            with contextlib.suppress(OSError):
                write_record(record_path(self.namespace_dir, key),
                             record._replace(identity=seen))
        return True

    def _deserialize(self, fd: int, st: os.stat_result, kind: Kind, entry: Path) -> Any:
        import wasmtime  # noqa: PLC0415

        cls = _compiled_class(kind)
        try:
            if self.mode == "mmap":
                # Map the inode behind our checked fd, not whatever `entry` names by now.
                return cls.deserialize_file(self.engine, _fd_path(fd))
            data = read_fd(fd, st.st_size)
            if Identity.of(os.fstat(fd)) != Identity.of(st):
                log.warning("wasmcache: %s changed while being read; recompiling", entry)
                return None
            return cls.deserialize(self.engine, data)
        except (wasmtime.WasmtimeError, OSError) as exc:
            log.warning("wasmcache: cannot load %s: %s", entry, exc)
            return None

    def _repair(self, key: str, seen: Identity | None, reason: str, *, locked: bool = False) -> None:
        """Quarantine the entry for `key` if it is still the file we judged bad (under the key lock)."""
        entry = self.namespace_dir / f"{key}{ENTRY_SUFFIX}"
        log.warning("wasmcache: bad cache entry %s: %s; quarantining it and recompiling", entry, reason)
        if not self.writable:
            return
        lock = KeyLock(lock_path(self.namespace_dir, key))
        if not locked:
            try:
                if not lock.acquire(timeout=self.lock_timeout):
                    return
            except OSError:
                return
        try:
            try:
                current = Identity.of(os.stat(entry, follow_symlinks=False))
            except FileNotFoundError:
                current = None
            if current is not None and (seen is None or current == seen):
                quarantine(self.root, entry, reason)
            with contextlib.suppress(FileNotFoundError):
                if current is None or seen is None or current == seen:
                    os.unlink(record_path(self.namespace_dir, key))
        finally:
            lock.release()

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
            path = os.fspath(source)
            if "\0" in path:
                raise SourceError(f"{path!r}: a path cannot contain a NUL byte")
            return path, path, None
        raise TypeError(f"source: expected a path or bytes, got {type(source).__name__}")

    def _wasm_digest(
        self, name: str, path: str | None, data: bytes | memoryview | None
    ) -> tuple[str, bytes | memoryview | None]:
        """The wasm's blake3; for a path, remembered by file identity so a hit never re-reads it."""
        if path is None:
            if data is None:  # _source returns a path or the bytes, never neither
                raise TypeError("source: expected a path or bytes")
            return wasm_digest(data), data
        try:
            st = os.stat(path)
        except OSError as exc:
            raise SourceError(f"{name}: cannot read: {exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(f"{name}: not a regular file")
        identity = Identity.of(st)
        with self._guard:
            known = self._digests.get(identity)
        if known is None:
            known = self._remembered_digest(identity)
        if known is not None:
            with self._guard:
                self._digests[identity] = known
            return known, None
        try:
            with open(path, "rb") as f:
                data = f.read()
                after = Identity.of(os.fstat(f.fileno()))
        except OSError as exc:
            raise SourceError(f"{name}: cannot read: {exc.strerror or exc}") from None
        digest = wasm_digest(data)
        if after == identity:  # remember only a digest of a file that did not change under us
            with self._guard:
                self._digests[identity] = digest
            self._remember_digest(identity, digest)
        return digest, data

    @staticmethod
    def _identity_token(identity: Identity) -> tuple[str, str]:
        """(memo file name, check token) for a source file's identity."""
        digest = blake3.blake3(f"{identity.dev}:{identity.ino}:{identity.size}:{identity.mtime_ns}:"
                               f"{identity.ctime_ns}".encode()).hexdigest()
        return digest[:32], digest[32:48]

    def _remembered_digest(self, identity: Identity) -> str | None:
        if self.disabled:
            return None
        name, token = self._identity_token(identity)
        try:  # os-level: this runs on every hit by path
            fd = os.open(f"{self.root}/digests/{name}", os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
            try:
                raw = os.read(fd, 128)
            finally:
                os.close(fd)
        except OSError:
            return None
        found, _, digest = raw.decode("ascii", "replace").partition(" ")
        if found != token or len(digest) != 64:
            return None
        return digest

    def _remember_digest(self, identity: Identity, digest: str) -> None:
        if not self.writable:
            return
        name, token = self._identity_token(identity)
        path = self.root / "digests" / name
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            write_small_file_atomically(path, f"{token} {digest}".encode())
        except OSError as exc:
            log.debug("wasmcache: cannot remember digest of a source in %s: %s", path, exc)

    # --- the miss path ----------------------------------------------------------------------------

    def _compile_and_publish(
        self, name: str, path: str | None, data: bytes | memoryview | None, key: str, kind: Kind, digest: str
    ) -> Any:
        lock: KeyLock | None = None
        if self.writable and not self.disabled:
            key_lock = KeyLock(lock_path(self.namespace_dir, key))
            try:
                self._ensure_namespace()
                if key_lock.acquire(timeout=self.lock_timeout):
                    lock = key_lock
                else:
                    log.warning("wasmcache: waited %.0f s for another process compiling %s; compiling here too",
                                self.lock_timeout, name)
            except OSError as exc:
                log.warning("wasmcache: cannot lock %s (%s); compiling without caching", key_lock.path,
                            exc.strerror or exc)
        try:
            if lock is not None:
                # Another process may have published while we waited for the lock.
                module = self._load_entry(key, kind, locked=True)
                if module is not None:
                    return module
                module = self._load_remote(key, kind, digest, name)
                if module is not None:
                    return module
            if data is None:
                data = self._read_source(name, path or name, digest)
            elif isinstance(data, memoryview):
                data = bytes(data)  # our own copy of a mutable buffer, checked against the digest keyed
                if wasm_digest(data) != digest:
                    raise SourceError(f"{name}: the buffer changed while being loaded")
            compiled = self._compile(name, data, kind)
            if lock is None:
                return compiled
            serialized = compiled.serialize()
            published = self._publish(serialized, key, kind, digest, name)
            if published is not None:
                self._upload(key, serialized)
            return published if published is not None else compiled
        finally:
            if lock is not None:
                lock.release()

    @staticmethod
    def _read_source(name: str, path: str, digest: str) -> bytes:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise SourceError(f"{name}: cannot read: {exc.strerror or exc}") from None
        if wasm_digest(data) != digest:
            raise SourceError(f"{name}: changed while being loaded; try again")
        return data

    def _compile(self, name: str, data: bytes, kind: Kind) -> Any:
        import wasmtime  # noqa: PLC0415

        started = time.perf_counter()
        try:
            compiled = _compiled_class(kind)(self.engine, data)
        except wasmtime.WasmtimeError as exc:
            reason = str(exc).strip().splitlines()
            raise CompileError(name, "; ".join(line.strip() for line in reason if line.strip())) from None
        with self._guard:
            self._compiles += 1
        log.info("wasmcache: compiled %s (%s) in %.2f s", name, kind, time.perf_counter() - started)
        return compiled

    def _ensure_namespace(self) -> None:
        namespace = self.namespace_dir
        namespace.mkdir(mode=0o700, exist_ok=True)
        engine_file = namespace / NAMESPACE_ENGINE_FILE
        if not engine_file.exists():
            write_small_file_atomically(engine_file, self.engine_identity.section, mode=0o444, durable=True)

    def _publish(self, serialized: bytes | bytearray, key: str, kind: Kind, digest: str, name: str) -> Any:
        """Publish `serialized` under `key` (we hold its lock); return the loaded entry, or None."""
        namespace = self.namespace_dir
        entry = namespace / f"{key}{ENTRY_SUFFIX}"
        try:
            record = Record(
                key=key, kind=kind, wasm_digest=digest,
                content_digest=blake3.blake3(serialized, max_threads=blake3.blake3.AUTO).hexdigest(),
                size=len(serialized), identity=None, source=os.path.basename(name)[:200],
                wasmtime_version=_wasmtime_version(), created=time.time(),
            )
            self._ensure_namespace()
            # Any leftover at the key (an orphan, or a bad file a reader could not repair) goes first.
            if os.path.lexists(entry):
                quarantine(self.root, entry, "replaced by a fresh compile")
            # The record first (without identity): a crash after the rename below leaves an entry
            # that the next loader verifies by content instead of recompiling.
            write_record(record_path(namespace, key), record)
            published = publish_atomically(entry, serialized)
            write_record(record_path(namespace, key), record._replace(identity=Identity.of(published)))
            self._ensure_namespace()  # a concurrent gc may have collected the empty namespace
        except Exception as exc:
            log.warning("wasmcache: could not store %s in the cache (%s); using it uncached",
                        name, getattr(exc, "strerror", None) or exc)
            with contextlib.suppress(OSError):
                os.unlink(record_path(namespace, key))
            return None
        self._account(record.size)
        return self._load_entry(key, kind, locked=True)

    # --- the remote tier (issue #5): consulted only on a local miss, under the key lock ----------

    def _remote_tier(self) -> RemoteTier | None:
        if self._remote is None and self._remote_settings is not None:
            from ._remote import RemoteTier  # noqa: PLC0415 - botocore & co. only when the local cache misses

            with self._guard:  # one tier (one client, one set of counters) per cache, whatever the threads
                if self._remote is None:
                    url, signing_key, trusted_keys = self._remote_settings
                    self._remote = RemoteTier(url, signing_key=signing_key, trusted_keys=trusted_keys)
        return self._remote

    def _load_remote(self, key: str, kind: Kind, digest: str, name: str) -> Any:
        remote = self._remote_tier()
        if remote is None:
            return None
        data = remote.fetch(key, self.engine_identity.fingerprint)
        if data is None:
            with self._guard:
                self._remote_misses += 1
            return None
        try:
            section = find_section(data, ENGINE_SECTION)
        except ValueError:
            section = b""
        if section != self.engine_identity.section:  # signed, but for another engine: never load it
            log.warning("wasmcache: remote artifact for %s was compiled by another engine; compiling locally", name)
            with self._guard:
                self._rejected += 1
            return None
        module = self._publish(data, key, kind, digest, name)
        if module is None:  # could not store it locally (disk full ...): load the verified bytes
            module = self._deserialize_bytes(data, kind, name)
            if module is None:
                return None
        with self._guard:
            self._remote_hits += 1
        return module

    def _deserialize_bytes(self, data: bytes, kind: Kind, name: str) -> Any:
        import wasmtime  # noqa: PLC0415

        cls = _compiled_class(kind)
        try:
            return cls.deserialize(self.engine, data)
        except wasmtime.WasmtimeError as exc:
            log.warning("wasmcache: cannot load the remote artifact for %s: %s", name, exc)
            return None

    def _upload(self, key: str, serialized: bytes | bytearray) -> None:
        remote = self._remote_tier()
        if remote is None or not remote.can_upload:
            return
        if remote.upload(key, self.engine_identity.fingerprint, bytes(serialized)):
            with self._guard:
                self._uploads += 1

    # --- size bound -------------------------------------------------------------------------------

    def _account(self, added: int) -> None:
        """Add a publication to the approximate usage; collect when over the bound (no scan per load)."""
        from ._maintenance import collect_garbage, read_usage, write_usage  # noqa: PLC0415

        gc_lock = KeyLock(self.root / "gc.lock")
        try:
            if not gc_lock.acquire(blocking=False):
                return  # a collection is running; it counts what we just published
        except OSError:
            return
        try:
            usage, age = read_usage(self.root)
            if usage is None or age > _USAGE_RECOUNT_INTERVAL or usage + added > self.max_size:
                collect_garbage(self.root, self.max_size)
            else:
                write_usage(self.root, usage + added)
        except (OSError, CacheError) as exc:
            log.warning("wasmcache: automatic gc of %s failed: %s", self.root, exc)
        finally:
            gc_lock.release()

    # --- management -------------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        from ._maintenance import scan_usage  # noqa: PLC0415

        entries, size = scan_usage(self.root) if not self.disabled else (0, 0)
        rejected = self._rejected + (self._remote.rejected if self._remote is not None else 0)
        with self._guard:
            return CacheStats(self._hits, self._misses, self._compiles, entries, size, self._remote_hits,
                              self._remote_misses, self._uploads, rejected)

    def gc(self, max_size: int | str | None = None) -> GcReport:
        """Evict least recently used entries (whole root) down to `max_size`; reap dead writers' temp files."""
        from ._maintenance import collect_garbage  # noqa: PLC0415

        limit = self.max_size if max_size is None else parse_size(max_size)
        with KeyLock(self.root / "gc.lock"):
            return collect_garbage(self.root, limit, require=True)

    def clear(self) -> int:
        """Remove every entry of every namespace; returns how many entries were removed."""
        from ._maintenance import clear_root  # noqa: PLC0415

        with _loaded_guard:
            _loaded_by_engine.clear()
        return clear_root(self.root)

    def verify(self, fix: bool = False) -> VerifyReport:
        """Check every entry against its record and namespace; `fix=True` quarantines what is bad."""
        from ._maintenance import verify_root  # noqa: PLC0415

        return verify_root(self.root, fix=fix)

    def entries(self) -> list[EntryInfo]:
        """Every entry of every namespace under the root, least recently used first."""
        from ._maintenance import list_entries  # noqa: PLC0415

        return list_entries(self.root)

    def __repr__(self) -> str:
        return f"ModuleCache(root={str(self.root)!r}, mode={self.mode!r}, max_size={self.max_size})"


