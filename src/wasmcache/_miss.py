"""The miss path: one process per key compiles (or takes the remote tier's artifact, or snapshots
a serialized file), publishes atomically under the key's lock, maps what it published; then, with
the lock released, uploads and counts the publication towards the size bound.

Publication order (each step survives a crash): the record without identity, the entry by
exclusive temp file + fsync + rename + directory fsync, then the record with the identity stat'ed
after the rename. A leftover at the key is set aside first; nothing is ever written in place.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _native
from ._elf import ENGINE_SECTION, find_section
from ._entry import quarantine
from ._errors import CompileError, EntryRefusedError, SourceError, wasmtime_reason
from ._fingerprint import fingerprint_of_section, wasmtime_version
from ._fs import write_atomically
from ._key import artifact_section, read_input, wasm_digest
from ._layout import NAMESPACE_ENGINE_FILE, entry_path, lock_path, namespace_name, record_path
from ._lock import KeyLock
from ._log import log
from ._record import Identity, Record, write_record

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from ._cache import Kind, ModuleCache
    from ._remote import RemoteTier
    from ._remote._settings import RemoteSettings



class Counters:
    """The counters of one ModuleCache, safe to bump from any thread."""

    NAMES = ("hits", "misses", "compiles", "remote_hits", "remote_misses", "uploads", "rejected")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def get(self, name: str) -> int:
        with self._lock:
            return self._values[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class Place(NamedTuple):
    """Where a key's entry lives: its namespace and the engine section every entry there carries.

    `section` None: not known yet (a snapshot found by its memo; the miss reads it from the artifact).
    `serialized`: the entry is a snapshot of a serialized input (its namespace is the artifact's own engine).
    """

    namespace: Path
    section: bytes | None
    serialized: bool

    @property
    def namespace_name(self) -> str:
        return self.namespace.name


class MissPath:
    """What a ModuleCache does when the entry for a key is not there (or not usable)."""

    def __init__(self, cache: ModuleCache, counters: Counters, remote: RemoteSettings | None,
                 load_entry: Callable[..., Any]) -> None:
        # Weak: the cache owns this object; a cycle would keep every ModuleCache (and its engine, and
        # the modules loaded with it) alive until the cyclic collector runs.
        self._cache = weakref.proxy(cache)
        self._counters = counters
        self._remote_settings = remote
        self._remote: RemoteTier | None = None
        self._remote_guard = threading.Lock()
        self._load_entry_method = weakref.WeakMethod(load_entry)  # the cache's checked load (locked=True)

    def _load_entry(self, place: Place, key: str, kind: Kind) -> Any:
        """The cache's checked load of `key`, as the holder of its lock."""
        load_entry = self._load_entry_method()
        if load_entry is None:
            raise ReferenceError("the ModuleCache of this miss is gone")
        return load_entry(place, key, kind, locked=True)

    @property
    def remote(self) -> RemoteTier | None:
        """The remote tier if one was set up (a local miss with a remote configured), else None."""
        return self._remote

    @property
    def rejected(self) -> int:
        """Remote artifacts the tier itself refused (bad signature ...), beyond our engine check."""
        return self._remote.rejected if self._remote is not None else 0

    @staticmethod
    def _own_copy(name: str, path: str | None, data: bytes | memoryview | None, digest: str) -> bytes:
        """The input's bytes, checked against the digest the key was made from."""
        if data is None:
            data, _ = read_input(name, path or name)
        elif isinstance(data, memoryview):
            data = bytes(data)  # our own copy of a mutable buffer
        else:
            return data
        if wasm_digest(data) != digest:
            raise SourceError(f"{name}: changed while being loaded; try again")
        return data

    # --- the miss path ----------------------------------------------------------------------------

    def load(self, name: str, path: str | None, data: bytes | memoryview | None, place: Place, key: str, kind: Kind,
             digest: str) -> Any:
        lock: KeyLock | None = None
        if self._cache.writable and not self._cache.disabled:
            key_lock = KeyLock(lock_path(place.namespace, key))
            try:
                self.ensure_namespace(place)
                if key_lock.acquire(timeout=self._cache.lock_timeout):
                    lock = key_lock
                else:
                    log.warning("wasmcache: waited %.0f s for another process loading %s; compiling here too",
                                self._cache.lock_timeout, name)
            except OSError as exc:
                log.warning("wasmcache: cannot lock %s (%s); compiling without caching", key_lock.path,
                            exc.strerror or exc)
        upload: bytes | bytearray | None = None
        try:
            module, published, upload = self._produce(name, path, data, place, key, kind, digest, lock is not None)
        finally:
            if lock is not None:
                # Nothing published (invalid wasm ...): the lock file goes too, so nothing stays
                # behind. A waiter on it re-checks the inode after locking and starts again.
                lock.release(unlink=not os.path.lexists(entry_path(place.namespace, key)))
        # Outside the key lock: every process waiting for this key maps the entry meanwhile.
        if published:
            self._after_publish(key, published, upload)
        return module

    def refuse(self, name: str, path: str | None, data: bytes | memoryview | None, kind: Kind) -> Any:
        """What wasmtime makes of a serialized input that is not a Wasmtime artifact (its error, as a CompileError)."""
        own = bytes(data) if data is not None else read_input(name, path or name)[0]
        return self._deserialize_copy(name, own, kind)

    def _produce(self, name: str, path: str | None, data: bytes | memoryview | None, place: Place, key: str,
                 kind: Kind, digest: str, locked: bool) -> tuple[Any, int, bytes | bytearray | None]:
        """(module, bytes published or 0, what to upload) for a miss; the caller holds the key lock if `locked`."""
        if locked:
            # Another process may have published while we waited for the lock.
            module = self._load_entry(place, key, kind)
            if module is not None:
                return module, 0, None
            if not place.serialized:
                module, size = self._load_remote(place, key, kind, digest, name)
                if module is not None:
                    return module, size, None
        own = self._own_copy(name, path, data, digest)
        if place.serialized:
            section = artifact_section(own, kind)
            if not locked or section is None or namespace_name(fingerprint_of_section(section)) != place.namespace.name:
                # Nowhere to publish, or not an artifact of this kind: do what wasmtime does, in memory.
                return self._deserialize_copy(name, own, kind), 0, None
            place = place._replace(section=section)
            blob: bytes | bytearray = own
            compiled = None
        else:
            compiled = self._compile(name, own, kind)
            if not locked:
                return compiled, 0, None
            blob = compiled.serialize()
        module = self._publish(blob, place, key, kind, digest, name, "snapshot" if place.serialized else "compiled")
        if module is None:  # not stored (disk full ...) or not loadable: what we have, in memory
            return (compiled if compiled is not None else self._deserialize_copy(name, own, kind)), 0, None
        return module, len(blob), None if place.serialized else blob

    def _compile(self, name: str, data: bytes, kind: Kind) -> Any:
        import wasmtime  # noqa: PLC0415

        started = time.perf_counter()
        try:
            compiled = _native.compile_wasm(kind, self._cache.engine, data)
        except wasmtime.WasmtimeError as exc:
            if data[:4] == b"\x7fELF":  # wasmtime would say "input was not valid utf-8" (it tried WAT)
                raise CompileError(name, "a precompiled Wasmtime file (.cwasm), not wasm: load it with "
                                   "load_precompiled()", exc) from None
            raise CompileError(name, wasmtime_reason(exc), exc) from None
        self._counters.add("compiles")
        log.info("wasmcache: compiled %s (%s) in %.2f s", name, kind, time.perf_counter() - started)
        return compiled

    def _deserialize_copy(self, name: str, data: bytes | bytearray, kind: Kind) -> Any:
        """wasmtime's `deserialize` of `data` (a copy, no mapping); what it refuses is a CompileError."""
        import wasmtime  # noqa: PLC0415

        try:
            return _native.deserialize(kind, self._cache.engine, data)
        except wasmtime.WasmtimeError as exc:
            raise CompileError(name, wasmtime_reason(exc), exc) from None

    @staticmethod
    def ensure_namespace(place: Place) -> None:
        """The namespace directory, and its engine file once the section is known."""
        place.namespace.mkdir(mode=0o700, exist_ok=True)
        engine_file = place.namespace / NAMESPACE_ENGINE_FILE
        if place.section is not None and not engine_file.exists():
            write_atomically(engine_file, place.section, mode=0o444, durable=True)

    def _publish(self, blob: bytes | bytearray, place: Place, key: str, kind: Kind, digest: str, name: str,
                 origin: str) -> Any:
        """Publish `blob` under `key` in `place` (we hold its lock); return the loaded entry, or None."""
        import blake3  # noqa: PLC0415

        namespace = place.namespace
        entry = entry_path(namespace, key)
        try:
            record = Record(
                key=key, kind=kind, wasm_digest=digest,
                content_digest=blake3.blake3(blob, max_threads=blake3.blake3.AUTO).hexdigest(),
                size=len(blob), identity=None, source=os.path.basename(name)[:200],
                wasmtime_version=wasmtime_version(), created=time.time(), origin=origin,
            )
            self.ensure_namespace(place)
            # Any leftover at the key (an orphan, or a bad file a reader could not repair) goes first.
            if os.path.lexists(entry):
                quarantine(self._cache.root, entry, "replaced by a fresh compile")
            # The record first (without identity): a crash after the rename below leaves an entry
            # that the next loader verifies by content instead of recompiling.
            write_record(record_path(namespace, key), record)
            published = write_atomically(entry, blob, durable=True, read_only=True)
            write_record(record_path(namespace, key), record._replace(identity=Identity.of(published)))
            self.ensure_namespace(place)  # a concurrent gc may have collected the empty namespace
        except Exception as exc:
            log.warning("wasmcache: could not store %s in the cache (%s); using it uncached",
                        name, getattr(exc, "strerror", None) or exc)
            with contextlib.suppress(OSError):
                os.unlink(record_path(namespace, key))
            return None
        try:
            return self._load_entry(place, key, kind)
        except EntryRefusedError:
            # This engine may not load the artifact it handed us (another engine's): nothing of it
            # stays, and wasmtime's own error goes up, as `deserialize_file` would have raised it.
            for path in (entry, record_path(namespace, key)):
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise

    def _after_publish(self, key: str, size: int, upload: bytes | bytearray | None) -> None:
        """Upload what this host compiled, then count it towards the size bound (collecting if over)."""
        if upload is not None:
            remote = self.remote_tier()
            if remote is not None and remote.can_upload and remote.upload(key, self._cache.engine_identity.fingerprint,
                                                                          bytes(upload)):
                self._counters.add("uploads")
        from ._maintenance import account_publication  # noqa: PLC0415 - only after a publication

        account_publication(self._cache.root, size, self._cache.max_size)

    # --- the remote tier: consulted only on a local miss, under the key lock ----------------------

    def remote_tier(self) -> RemoteTier | None:
        if self._remote is None and self._remote_settings is not None:
            from ._remote import RemoteTier  # noqa: PLC0415 - botocore & co. only when the local cache misses

            with self._remote_guard:  # one tier (one client, one set of counters) per cache, whatever the threads
                if self._remote is None:
                    self._remote = RemoteTier.from_settings(self._remote_settings)
        return self._remote

    def _load_remote(self, place: Place, key: str, kind: Kind, digest: str, name: str) -> tuple[Any, int]:
        remote = self.remote_tier()
        if remote is None:
            return None, 0
        data = remote.fetch(key, self._cache.engine_identity.fingerprint)
        if data is None:
            self._counters.add("remote_misses")
            return None, 0
        try:
            section = find_section(data, ENGINE_SECTION)
        except ValueError:
            section = b""
        if section != self._cache.engine_identity.section:  # signed, but for another engine: never load it
            log.warning("wasmcache: remote artifact for %s was compiled by another engine; compiling locally", name)
            self._counters.add("rejected")
            return None, 0
        module = self._publish(data, place, key, kind, digest, name, "remote")
        size = len(data) if module is not None else 0
        if module is None:  # could not store it locally (disk full ...): load the verified bytes
            try:
                module = self._deserialize_copy(name, data, kind)
            except CompileError as exc:
                log.warning("wasmcache: cannot load the remote artifact for %s: %s", name, exc.reason)
                return None, 0
        self._counters.add("remote_hits")
        return module, size
