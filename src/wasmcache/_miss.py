"""The miss path: one process per key compiles (or takes the remote tier's artifact, or snapshots
a serialized file), publishes atomically under the key's lock, maps what it published; then, with
the lock released, uploads and counts the publication towards the size bound.

Its dependencies come in explicitly: the cache's context (root, engine, settings, counters), the
storage of the key's namespace (`Place.namespace`, which owns the publication order), and the
checked load the hit path uses (`load_entry`). It never reaches back into the `ModuleCache`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Final, Protocol

from . import _core
from ._core import (
    SUBSTITUTERS_DIR,
    EntryRefusedError,
    Namespace,
    Place,
    Record,
    artifact_section,
    fingerprint_of_section,
    log,
    read_input,
    snapshot_key,
    wasm_digest,
    wasmtime_version,
)
from ._elf import ENGINE_SECTION, find_section
from ._errors import CompileError, SourceError, fd_named, wasmtime_reason

if TYPE_CHECKING:
    from ._core import CacheContext, CheckedEntry, Identity, Kind
    from ._lock import KeyLock
    from ._public import PublicTier, SubstituterSettings
    from ._public._client import Fetched
    from ._remote import RemoteTier
    from ._remote._settings import RemoteSettings


# A compile of this much wasm takes a second or more: a terminal is told it started, and why.
_LONG_COMPILE_BYTES: Final = 4 << 20


class LoadEntry(Protocol):
    """The hit path's checked load (`_cache.load_entry`): (module, identity mapped) or (None, None)."""

    def __call__(self, ctx: CacheContext, place: Place, key: str, kind: Kind, *, locked: bool = False) -> tuple[
            Any, Identity | None]: ...


class MapChecked(Protocol):
    """The hit path's map of a checked entry (`_cache.map_checked`): the module, or EntryRefusedError
    when this engine may not load it."""

    def __call__(self, ctx: CacheContext, checked: CheckedEntry, kind: Kind) -> Any: ...


class MissPath:
    """What a ModuleCache does when the entry for a key is not there (or not usable)."""

    def __init__(self, ctx: CacheContext, remote: RemoteSettings | None, load_entry: LoadEntry,
                 substituters: SubstituterSettings | None = None, *, map_checked: MapChecked) -> None:
        self._ctx = ctx
        self._load_entry = load_entry
        self._map_checked = map_checked
        self._remote_settings = remote
        self._remote: RemoteTier | None = None
        self._remote_guard = threading.Lock()
        self._substituter_settings = substituters
        self._public: PublicTier | None = None
        # Modules this process produced but could not store (disk full ...), by key, while the program
        # holds them: a thread that waited on the key's lock takes the same one instead of compiling again.
        self._unstored: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        # Why the last miss of a key stored nothing, in the words of its warning (`wasmcache compile` says it).
        self.not_stored: dict[str, str] = {}

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
             digest: str, *, replace: bool = False) -> Any:
        """Produce the module for a key nothing served, publishing it when the root may be written.
        `replace`: compile here even over an entry that is there (`ModuleCache.recompile`)."""
        ctx = self._ctx
        lock: KeyLock | None = None
        stores = ctx.stores_in(place.namespace)  # one lstat of the namespace
        if ctx.stores and not stores:  # the cache stores, this namespace does not: a link (see stores_in)
            self.not_stored[key] = f"{place.namespace.path} is a symbolic link, never followed"
        elif stores:
            key_lock = place.namespace.lock(key)
            with contextlib.suppress(OSError):  # no engine file (a full disk): publishing fails later, in its words
                place.namespace.ensure(place.section)
            try:
                if self._wait_for(key_lock, name):  # still one compile per key, whoever stores nothing
                    lock = key_lock
            except OSError as exc:
                unwritable = exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)  # the namespace's, not the key's
                self.not_stored[key] = (f"{place.namespace.path} cannot be written ({exc.strerror})" if unwritable
                                        else f"cannot lock {key_lock.path} ({exc.strerror or exc})")
                log.warning("wasmcache: %s; %s%s", self.not_stored[key],
                            "loading it as a copy, not mapped from the file" if place.serialized
                            else "compiling without caching", "; `wasmcache doctor` says more" if unwritable else "")
        upload: bytes | bytearray | None = None
        try:
            module, added, upload = self._produce(name, path, data, place, key, kind, digest, lock is not None,
                                                  replace=replace)
        finally:
            if lock is not None:
                # Nothing published (invalid wasm ...): the lock file goes too, so nothing stays
                # behind. A waiter on it re-checks the inode after locking and starts again.
                lock.release(unlink=not os.path.lexists(place.namespace.entry_path(key)))
        # Outside the key lock: every process waiting for this key maps the entry meanwhile.
        if added is not None:
            self._after_publish(place, key, added, upload)
        return module

    def _wait_for(self, key_lock: KeyLock, name: str) -> bool:
        """Take the key's lock, waiting up to `lock_timeout` for the process compiling this key; False
        (compile here too) past that, or at once when that process is stopped: a Ctrl-Z'd or frozen job
        would otherwise hold every other process loading this module for the whole timeout."""
        from ._lock import holder_name, wait_for_lock  # noqa: PLC0415 - a miss's (a hit takes no lock)

        ctx = self._ctx

        def waiting(pid: int | None) -> None:
            log.info("wasmcache: waiting for %s, which is producing %s (compiling or downloading it; up to %.0f s)",
                     holder_name(pid), name, ctx.lock_timeout)

        taken, stopped_pid = wait_for_lock(key_lock, ctx.lock_timeout, waiting)
        if stopped_pid is not None:
            log.warning("wasmcache: process %d, producing %s, is stopped; compiling here too", stopped_pid, name)
        elif not taken:
            log.warning("wasmcache: waited %.0f s for another process loading %s; compiling here too",
                        ctx.lock_timeout, name)
        return taken

    def refuse(self, name: str, path: str | None, data: bytes | memoryview | None, kind: Kind) -> Any:
        """What wasmtime makes of a serialized input that is not a Wasmtime artifact (its error, as a CompileError)."""
        own = bytes(data) if data is not None else read_input(name, path or name)[0]
        return self._deserialize_copy(name, own, kind)

    def _produce(self, name: str, path: str | None, data: bytes | memoryview | None, place: Place, key: str,
                 kind: Kind, digest: str, locked: bool, *, replace: bool = False) -> tuple[
            Any, int | None, bytes | bytearray | None]:
        """(module, bytes added to the root by a publication or None, what to upload) for a miss; the caller
        holds the key lock if `locked`."""
        why: str | None = None  # why no substituter served it, for a long compile's line
        if locked and replace:
            place.namespace.unpublish(key)  # we hold its lock; a process that mapped it keeps its inode
        elif locked:
            module, added, why = self._served_elsewhere(place, key, kind, digest, name)
            if module is not None:
                return module, added, None
        own = self._own_copy(name, path, data, digest)
        if place.serialized:
            section = artifact_section(own, kind)
            if not locked or section is None or fingerprint_of_section(section) != place.fingerprint:
                # Nowhere to publish, or not an artifact of this kind: do what wasmtime does, in memory.
                return self._deserialize_copy(name, own, kind), None, None
            place = Place(place.namespace, section, place.fingerprint, serialized=True)
            blob: bytes | bytearray = own
            compiled = None
        else:
            if not locked and not replace and not self._ctx.disabled:
                module = self._substitute_unstored(place, kind, digest, name)
                if module is not None:
                    return module, None, None
                why = self._why_not_substituted()
            compiled = self._compile(name, own, kind, why)
            if not locked:
                return compiled, None, None
            blob = compiled.serialize()
        module, added = self._publish(blob, place, key, kind, digest, name,
                                      "snapshot" if place.serialized else "compiled")
        if module is None:  # not stored (disk full ...) or not loadable: what we have, in memory
            module = compiled if compiled is not None else self._deserialize_copy(name, own, kind)
            self._unstored[key] = module
            return module, None, None
        return module, added, None if place.serialized else blob

    def _served_elsewhere(self, place: Place, key: str, kind: Kind, digest: str, name: str) -> tuple[
            Any, int | None, str | None]:
        """Before compiling, under the key lock: (module, bytes added, why no substituter served it).

        Another process may have published while we waited; else the remote tier, then the substituters."""
        module, _ = self._load_entry(self._ctx, place, key, kind, locked=True)
        if module is None:
            module = self._unstored.get(key)  # the thread before us here could not store it either
        if module is not None or place.serialized:
            return module, None, None
        module, added = self._load_remote(place, key, kind, digest, name)
        if module is None:
            module, added = self._load_substitute(place, key, kind, digest, name)
        return module, added, self._why_not_substituted() if module is None else None

    def _why_not_substituted(self) -> str | None:
        """Why no substituter served the last miss, for the long compile's line; None when that was just
        said as a warning (a terminal would show it twice) or none was asked."""
        tier = self._public
        return tier.last_reason if tier is not None and not tier.last_warned else None

    def _compile(self, name: str, data: bytes, kind: Kind, no_substitute: str | None = None) -> Any:
        """Compile `data` here; a long compile (a large input) says so on a terminal, and why no substituter
        served it (`no_substitute`)."""
        import wasmtime  # noqa: PLC0415

        long = len(data) >= _LONG_COMPILE_BYTES
        if long:
            log.progress("wasmcache: compiling %s (%.0f MB)%s", os.path.basename(name), len(data) / 1e6,
                         f"; no precompiled substitute: {no_substitute}" if no_substitute else "")
        started = time.perf_counter()
        try:
            compiled = _core.compile_wasm(kind, self._ctx.engine, data)
        except wasmtime.WasmtimeError as exc:
            if data[:4] == b"\x7fELF":  # wasmtime would say "input was not valid utf-8" (it tried WAT)
                raise CompileError(name, "a precompiled Wasmtime file (.cwasm), not wasm: load it with "
                                   "load_precompiled()", exc) from None
            raise CompileError(name, wasmtime_reason(exc), exc) from None
        self._ctx.counters.add("compiles")
        (log.progress if long else log.info)("wasmcache: compiled %s (%s) in %.2f s", name, kind,
                                             time.perf_counter() - started)
        return compiled

    def _deserialize_copy(self, name: str, data: bytes | bytearray, kind: Kind) -> Any:
        """wasmtime's `deserialize` of `data` (a copy, no mapping); what it refuses is a CompileError."""
        import wasmtime  # noqa: PLC0415

        try:
            return _core.deserialize(kind, self._ctx.engine, data)
        except wasmtime.WasmtimeError as exc:
            raise CompileError(name, wasmtime_reason(exc), exc) from None

    def _publish(self, blob: bytes | bytearray, place: Place, key: str, kind: Kind, digest: str, name: str,
                 origin: str) -> tuple[Any, int]:
        """Publish `blob` under `key` in `place` (we hold its lock): (the loaded entry or None, bytes added)."""
        import blake3  # noqa: PLC0415

        record = Record(
            key=key, kind=kind, wasm_digest=digest,
            content_digest=blake3.blake3(blob, max_threads=blake3.blake3.AUTO).hexdigest(),
            size=len(blob), identity=None, source=os.path.basename(name)[:200],
            wasmtime_version=wasmtime_version(), created=time.time(), origin=origin,
        )
        try:
            _, shared = place.namespace.publish(key, blob, record, place.section, share=self._twin(blob, kind, origin),
                                                accept=lambda twin: self._map_checked(self._ctx, twin, kind))
        except EntryRefusedError as refused:  # the identical entry is one this engine may not load: nothing stored
            if origin == "snapshot":
                _snapshot_refused(name, refused)
            raise
        except Exception as exc:
            instead = "loading it as a copy, not mapped from the file" if origin == "snapshot" else "using it uncached"
            why = getattr(exc, "strerror", None) or exc
            self.not_stored[key] = f"could not store it in {place.namespace.path} ({why})"
            entry = str(place.namespace.entry_path(key))
            said = any(path == entry for path, _ in self._ctx.bad_entries_said)  # "... cannot be set aside": one line
            (log.info if said else log.warning)("wasmcache: could not store %s in the cache at %s (%s); %s", name,
                                                place.namespace.path, why, instead)
            return None, 0
        try:
            module = self._load_entry(self._ctx, place, key, kind, locked=True)[0]
        except EntryRefusedError as refused:
            # This engine may not load the artifact it handed us (another engine's): nothing of it
            # stays, and wasmtime's own error goes up, as `deserialize_file` would have raised it.
            place.namespace.unpublish(key)
            if origin == "snapshot":
                _snapshot_refused(name, refused)
            raise
        if module is not None and origin == "snapshot":  # the drop-in's safety action, as visible under -v
            log.info("wasmcache: snapshot of %s taken (%s%s): mapped from the cache, never from the program's "
                     "own file", name, kind, ", sharing an identical entry" if shared else "")
        elif module is not None and shared:
            log.debug("wasmcache: %s is identical to an entry already stored: sharing it", name)
        return module, 0 if shared else len(blob)

    def _twin(self, blob: bytes | bytearray, kind: Kind, origin: str) -> bool | tuple[Namespace, str]:
        """Where an entry identical to `blob` may already be (identical content is stored once, whichever
        came first; see `Namespace.publish`).

        A snapshot (a program's own artifact: YoWASP compiles through us, then writes `serialize()` to
        its own cache file and maps that) may hold the bytes of any entry: a scan of the root. Anything
        else (a compile, a remote artifact) can only be the bytes of a snapshot taken first (the program's
        file was there from an unwrapped run), and that snapshot's key follows from them: one lookup.
        """
        if origin == "snapshot":
            return True
        section = artifact_section(blob, kind)
        if section is None:
            return False
        fingerprint = fingerprint_of_section(section)
        return Namespace.of(self._ctx.root, fingerprint), snapshot_key(fingerprint, kind, wasm_digest(blob))

    def _after_publish(self, place: Place, key: str, size: int, upload: bytes | bytearray | None) -> None:
        """Upload what this host compiled, then count it towards the size bound (collecting if over)."""
        if upload is not None:
            remote = self.remote_tier()
            if remote is not None and remote.can_upload and remote.upload(key, place.fingerprint, bytes(upload)):
                self._ctx.counters.add("uploads")
        from ._maintenance import account_publication  # noqa: PLC0415 - only after a publication

        with contextlib.suppress(OSError):  # its record counts too, as gc and verify count it
            size += os.stat(place.namespace.record_path(key)).st_size
        account_publication(self._ctx.root, size, self._ctx.max_size)

    # --- the remote tier: consulted only on a local miss, under the key lock ----------------------

    def remote_tier(self) -> RemoteTier | None:
        if self._remote is None and self._remote_settings is not None:
            from ._remote import RemoteTier  # noqa: PLC0415 - botocore & co. only when the local cache misses

            with self._remote_guard:  # one tier (one client, one set of counters) per cache, whatever the threads
                if self._remote is None:
                    self._remote = RemoteTier.from_settings(self._remote_settings)
        return self._remote

    def _load_remote(self, place: Place, key: str, kind: Kind, digest: str, name: str) -> tuple[Any, int | None]:
        remote = self.remote_tier()
        if remote is None:
            return None, None
        counters = self._ctx.counters
        data = remote.fetch(key, place.fingerprint)
        if data is None:
            counters.add("remote_misses")
            return None, None
        try:
            section = find_section(data, ENGINE_SECTION)
        except ValueError:
            section = b""
        if section != place.section:  # signed, but for another engine: never load it
            log.warning("wasmcache: remote artifact for %s was compiled by another engine; compiling locally", name)
            counters.add("rejected")
            return None, None
        module, added = self._publish(data, place, key, kind, digest, name, "remote")
        if module is None:  # could not store it locally (disk full ...): load the verified bytes
            try:
                module = self._deserialize_copy(name, data, kind)
            except CompileError as exc:
                log.warning("wasmcache: cannot load the remote artifact for %s: %s", name, exc.reason)
                return None, None
            counters.add("remote_hits")
            return module, None
        counters.add("remote_hits")
        return module, added

    # --- substituters: a publisher's signed, precompiled artifacts, only on a local miss --------------

    def public_tier(self) -> PublicTier | None:
        settings = self._substituter_settings
        if self._public is None and settings is not None and (settings.substituters or settings.declared):
            from ._public import PublicTier  # noqa: PLC0415 - the client (and tuf) only when a miss asks

            with self._remote_guard:
                if self._public is None:
                    ctx = self._ctx
                    state = ctx.root / SUBSTITUTERS_DIR if ctx.stores else None
                    if state is not None:
                        with contextlib.suppress(OSError):  # trusted TUF state: as private as the root
                            state.mkdir(mode=0o700, exist_ok=True)
                    self._public = PublicTier(settings, state_dir=state, progress=_announce_download)
        return self._public

    def _load_substitute(self, place: Place, key: str, kind: Kind, digest: str, name: str) -> tuple[Any, int | None]:
        """Fill `key` from the first substituter that has an artifact this host's engine loads (we hold its
        lock); (None, None) on any failure: the caller compiles."""
        asked = self._substituters_for(place)
        if asked is None:
            return None, None
        try:
            temp = place.namespace.new_temp(key)
        except OSError:
            return None, None
        try:
            fetched = self._fetch(*asked, kind, digest, name, temp.fd)
        except BaseException:
            temp.discard()
            raise
        if fetched is None:
            temp.discard()
            return None, None
        record = Record(
            key=key, kind=kind, wasm_digest=digest, content_digest=fetched.blake3, size=fetched.size, identity=None,
            source=os.path.basename(name)[:200], wasmtime_version=fetched.wasmtime, created=time.time(),
            origin="substituted", substituter=fetched.url, level=fetched.level,
        )
        try:
            place.namespace.publish(key, temp, record, place.section)
        except Exception as exc:
            log.warning("wasmcache: could not store the substitute for %s in the cache at %s (%s); compiling it",
                        name, place.namespace.path, getattr(exc, "strerror", None) or exc)
            return None, None
        # wasmtime is the final judge: an artifact it refuses is set aside by the checked load, and compiled.
        module, _ = self._load_entry(self._ctx, place, key, kind, locked=True)
        if module is None:
            return None, None
        self._substituted(name, fetched, "")
        return module, fetched.size

    def _substitute_unstored(self, place: Place, kind: Kind, digest: str, name: str) -> Any:
        """Where nothing can be stored (a read-only root): the first substituter's artifact, verified as
        always, into a sealed memfd (no shrink, no growth, no write: immutable, so mapping it is as safe as
        mapping an entry), mapped from there; nothing is written anywhere. None on any failure (compile)."""
        asked = self._substituters_for(place) if hasattr(os, "memfd_create") else None  # memfd: Linux
        if asked is None:
            return None
        import fcntl  # noqa: PLC0415

        import wasmtime  # noqa: PLC0415

        try:
            fd = os.memfd_create(f"wasmcache-{digest[:16]}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError:
            return None
        try:
            fetched = self._fetch(*asked, kind, digest, name, fd)
            if fetched is None:
                return None
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE |
                        fcntl.F_SEAL_SEAL)
            module = _core.deserialize_file(kind, self._ctx.engine, f"/proc/self/fd/{fd}")
        except (OSError, wasmtime.WasmtimeError) as exc:
            log.info("wasmcache: the substitute for %s could not be mapped from memory (%s); compiling it", name, exc)
            return None
        finally:
            os.close(fd)  # wasmtime holds its own mapping
        self._substituted(name, fetched, ", in memory (the root is not writable)")
        return module

    def _substituters_for(self, place: Place) -> tuple[PublicTier, bytes] | None:
        """The substituters to ask and the engine section they serve, or None (none configured, no section)."""
        tier = self.public_tier()
        if tier is None or place.section is None or not tier.substituters():
            return None
        return tier, place.section

    def _fetch(self, tier: PublicTier, section: bytes, kind: Kind, digest: str, name: str, dest: int) -> Fetched | None:
        """The verified artifact for (kind, digest) into `dest`, or None; a rejection is counted."""
        fetched = tier.fetch(kind=kind, wasm_digest=digest, host_section=section, dest=dest, name=name)
        if fetched is None and tier.last_rejected:  # an answer that failed verification: someone may be tampering
            self._ctx.counters.add("rejected")  # `pull` exits 1
        return fetched

    def _substituted(self, name: str, fetched: Fetched, where: str) -> None:
        self._ctx.counters.add("substituted")
        log.info("wasmcache: substituted %s from %s (%s, %s) in %.3f s%s", name, fetched.url, fetched.level,
                 _size(fetched.size), fetched.seconds, where)


def _snapshot_refused(name: str, refused: EntryRefusedError) -> None:
    log.info("wasmcache: snapshot of %s not taken: this engine may not load it (%s)", name,
             fd_named(str(refused), name))


def _announce_download(name: str, level: str, url: str, done: int, total: int) -> None:
    """The one line a terminal shows when a download starts (the client calls this as it goes)."""
    if done == 0:
        what = "a module given as bytes" if name.startswith("<") else os.path.basename(name)
        log.progress("wasmcache: fetching precompiled %s, %s, %s from %s", what, level, _size(total), url)


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB"):
        if n < 1000 or unit == "MB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
