"""`ModuleCache`: the public API and the hit path.

The whole safety argument of a hit, top-down in `_load` and `load_entry`:

  source -> digest     path inputs: digest remembered by file identity (dev, ino, size, mtime, ctime)
         -> key        blake3(engine fingerprint, module|component, input digest)
         -> entry      ROOT/ns-<fingerprint>/<key>.cwasm, opened O_NOFOLLOW, never for writing
         -> check      fstat of *that open fd* == the identity recorded after publication;
                       else full content digest + engine section, then re-record or quarantine
                       (`Namespace.check`, the same check `verify` and `push` make)
         -> map        wasmtime maps /proc/self/fd/N: the inode we checked, not whatever the path
                       names a microsecond later

Entries are only ever replaced by rename, so a process keeps the inode it mapped even while
others clear, collect, quarantine or republish the key. A miss goes to `_miss.MissPath`.
"""

from __future__ import annotations

import os
import time
from _thread import allocate_lock
from typing import TYPE_CHECKING, Any, Final, Literal

from . import _core
from ._core import (
    DEFAULT_LOCK_TIMEOUT,
    CacheContext,
    CheckedEntry,
    EntryRefusedError,
    Identity,
    Loaded,
    Namespace,
    Place,
    SourceDigests,
    UntrustedEntryError,
    artifact_fingerprint,
    cache_key,
    forget_all,
    loaded_by_engine,
    loaded_guard,
    log,
    read_fd,
    remember,
    resolve_max_size,
    served_entries,
    snapshot_key,
    source_of,
    unsafe_reason,
    wasm_digest,
)
from ._errors import CacheError, CompileError, ConfigError, SourceError, wasmtime_reason

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    import wasmtime
    from wasmtime.component import Component

    from ._core import EngineIdentity, Kind, Mode, Source
    from ._engine import EngineSettings
    from ._maintenance import EntryInfo, GcReport
    from ._miss import MissPath
    from ._public import SubstituterSettings
    from ._remote._settings import RemoteSettings
    from ._stats import CacheStats
    from ._verify import VerifyReport

__all__ = ["ModuleCache"]

# A hit refreshes its record's mtime (the LRU clock) at most this often: one utime per minute
# per entry, not one metadata write per load.
_TOUCH_INTERVAL: Final = 60.0


# Linux's /proc, else macOS and the BSDs' /dev/fd: a path that opens the very file behind an fd.
_FD_DIR: Final = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"


class _EntryChangedError(Exception):
    """An entry changed while it was read into memory (mode="memory"): a race, not a bad entry."""


_miss_path_guard = allocate_lock()  # _thread's: `threading` is not imported on the hit path


class ModuleCache:
    """A crash-safe, content-addressed cache of compiled Wasmtime modules and components.

    ``root=None`` uses ``$WASMCACHE_DIR`` or the platform user cache directory (made absolute once).
    ``engine`` is any `wasmtime.Engine` (or `EngineSettings` to build one, validated); ``None`` =
    ``wasmtime.Engine()``. ``mode="mmap"`` maps entries (fast, pages shared between processes);
    ``"memory"`` reads, checks and deserializes a copy, holding no mapping. ``max_size`` bounds the
    whole root (bytes or ``"2G"``; ``None`` = ``$WASMCACHE_MAX_SIZE`` or 4 GiB); the bound is
    enforced after publications, never by a scan on the hit path. ``enabled=False`` compiles every
    time and touches nothing, as ``$WASMCACHE_DISABLE=1`` does. ``substituters`` (URLs, in priority
    order) and ``substituter_roots`` (the publishers' root.json files) fill a local miss with a
    publisher's signed, precompiled artifact (default: ``$WASMCACHE_SUBSTITUTERS`` and
    ``$WASMCACHE_SUBSTITUTER_ROOTS``, plus what installed tools declare).
    """

    # The per-process memo (see `Loaded`): one module per key and engine, kept while it is recent. The
    # drop-in's caches have none: a guest keeps no module (nor its descriptor) alive beyond the program.
    _memo = True

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        engine: wasmtime.Engine | EngineSettings | None = None,
        mode: Mode = "mmap",
        max_size: int | str | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        strict: bool = True,
        enabled: bool = True,
        remote: str | Literal[False] | None = None,
        signing_key: str | os.PathLike[str] | None = None,
        trusted_keys: Sequence[str | os.PathLike[str]] | None = None,
        substituters: Sequence[str] | str | None = None,
        substituter_roots: Sequence[str | os.PathLike[str]] | None = None,
    ) -> None:
        self._ctx = ctx = CacheContext(root, engine=engine, mode=mode, max_size=max_size, lock_timeout=lock_timeout,
                                       strict=strict, enabled=enabled)
        self._counters = ctx.counters
        self._digests = SourceDigests()
        # Settings are checked now (a bad argument fails here, not at the first miss), but their modules are
        # imported only when something is configured: a process that only hits pays for neither.
        self._remote_settings: RemoteSettings | None = None
        if remote is not False and (remote or os.environ.get("WASMCACHE_REMOTE")):
            from ._remote._settings import resolve_remote_settings  # noqa: PLC0415

            self._remote_settings = resolve_remote_settings(remote, signing_key, trusted_keys)
        self._substituter_settings: SubstituterSettings | Literal["environment"] | None = "environment"
        if substituters is not None or substituter_roots is not None or _substituters_in_environment():
            from ._public import settings_for_cache  # noqa: PLC0415

            self._substituter_settings = settings_for_cache(substituters, substituter_roots)
        self._miss_path: MissPath | None = None

    @property
    def _miss(self) -> MissPath:
        """The miss path, made at the first miss (its module is not imported by a process that only hits)."""
        if self._miss_path is None:
            from ._miss import MissPath  # noqa: PLC0415

            with _miss_path_guard:  # one per cache: threads missing at once share its state (tiers, unstored)
                if self._miss_path is None:
                    settings = self._substituter_settings
                    if settings == "environment":  # nothing configured: what installed tools declare, if any
                        from ._public import settings_for_cache  # noqa: PLC0415

                        settings = settings_for_cache(None, None)
                    self._miss_path = MissPath(self._ctx, self._remote_settings, load_entry, settings,
                                               map_checked=map_checked)
        return self._miss_path

    def _why_not_stored(self, key: str) -> str | None:
        """Why this cache's last miss of `key` stored nothing (its warning's words), if one did."""
        return self._miss_path.not_stored.get(key) if self._miss_path is not None else None

    # --- what the cache is ------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self._ctx.root

    @property
    def mode(self) -> Mode:
        return self._ctx.mode

    @property
    def max_size(self) -> int:
        return self._ctx.max_size

    @property
    def lock_timeout(self) -> float:
        return self._ctx.lock_timeout

    @property
    def strict(self) -> bool:
        return self._ctx.strict

    @property
    def disabled(self) -> bool:
        """Compiling every time, remembering nothing ($WASMCACHE_DISABLE, enabled=False, an unsafe root)."""
        return self._ctx.disabled

    @property
    def writable(self) -> bool:
        """Whether misses are stored (a writable root); a read-only root still serves hits."""
        return self._ctx.writable

    @property
    def engine(self) -> wasmtime.Engine:
        """The `wasmtime.Engine` every module of this cache is compiled for."""
        return self._ctx.engine

    @property
    def engine_identity(self) -> EngineIdentity:
        return self._ctx.engine_identity

    @property
    def namespace_dir(self) -> Path:
        return self._ctx.namespace.path

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

    def recompile(self, source: Source, kind: Kind = "module") -> Any:
        """Compile `source` here and publish it over its entry, whatever filled that entry (a substituter's
        CPU level, the remote tier): for a host that wants its own CPU's every feature. Returns the module;
        a process that mapped the old entry keeps it."""
        if kind not in ("module", "component"):
            raise ConfigError(f"kind={kind!r}: expected 'module' or 'component'")
        ctx = self._ctx
        name, path, data = source_of(source)
        digest, data = self._digest(name, path, data)
        place, key = self._compiled_place(kind, digest, remembered=path is not None)
        ctx.counters.add("misses")
        module = self._miss.load(name, path, data, place, key, kind, digest, replace=True)
        loaded = self._loaded_modules()
        with loaded_guard:
            released = remember(self.engine, loaded, (str(ctx.root), ctx.mode, kind, key),
                                Loaded.of(module, place.namespace.entry_path(key), ctx.mode, None))
        del released  # outside the guard: a released module's destructor runs here
        return module

    def key_for(self, source: Source, kind: Kind = "module") -> str:
        """The cache key `source` has under this cache's engine (for `inspect` and tooling)."""
        name, path, data = source_of(source)
        digest, _ = self._digest(name, path, data)
        return cache_key(self.engine_identity.fingerprint, kind, digest)

    def entry_path(self, key: str) -> Path:
        return self._ctx.namespace.entry_path(key)

    def entry_info(self, key: str) -> EntryInfo | None:
        """What the entry of `key` is and where it came from (None: no entry)."""
        from ._maintenance import entry_info  # noqa: PLC0415

        return entry_info(self._ctx.namespace, key)

    # --- the hit path --------------------------------------------------------------------------

    def _load(self, source: Source, kind: Kind, *, serialized: bool = False, again: bool = False) -> Any:
        ctx = self._ctx
        name, path, data = source_of(source)
        derive: Callable[[str, str, str], str] = snapshot_key if serialized else cache_key
        if serialized:
            # A snapshot lives in the namespace of the artifact's own engine section, remembered
            # with its digest: no probe of this engine. wasmtime's own check at the map decides
            # whether this engine may load it, as it would for the program's own file.
            digest, fingerprint, data = self._artifact_digest(name, path, data)
            if fingerprint is None:  # not a Wasmtime artifact: wasmtime's own error, nothing cached
                return self._miss.refuse(name, path, data, kind)
            place = Place(Namespace.of(ctx.root, fingerprint), None, fingerprint, serialized=True)
            key = self._key(derive, fingerprint, kind, digest, remembered=path is not None)
        else:
            digest, data = self._digest(name, path, data)
            place, key = self._compiled_place(kind, digest, remembered=path is not None)
        if ctx.disabled:  # $WASMCACHE_DISABLE: compile every time, remember nothing, not even here
            ctx.counters.add("misses")
            return self._miss.load(name, path, data, place, key, kind, digest)
        memo_key = (str(ctx.root), ctx.mode, kind, key)
        loaded = self._loaded_modules() if self._memo else None
        remembered = None
        if loaded is not None:
            with loaded_guard:
                remembered = loaded.get(memo_key)
                released = remember(self.engine, loaded, memo_key) if remembered is not None else []
            del released
        module = remembered.module if remembered is not None and remembered.still_valid() else None
        mapped: Identity | None = None
        try:
            if module is None:
                module, mapped = load_entry(ctx, place, key, kind, digest=digest)
            if module is not None:
                ctx.counters.add("hits")
                log.info("wasmcache: hit %s (%s)", name, kind)
            else:
                if _another_configurations(ctx, place):  # never compile and publish under a wrong fingerprint
                    return self._load(source, kind, serialized=serialized, again=again)
                if path is not None and not again and derive(place.fingerprint, kind, digest) != key:
                    # A remembered key that is not the one its digest makes (a damaged memo): nothing is
                    # compiled or published under it; the memo is corrected and the load asked again.
                    log.warning("wasmcache: a remembered key of %s was wrong; it is derived again", name)
                    self._digests.key(derive, place.fingerprint, kind, digest, ctx.memo_root, writable=ctx.stores,
                                      fresh=True)
                    return self._load(source, kind, serialized=serialized, again=True)
                ctx.counters.add("misses")
                try:
                    module = self._miss.load(name, path, data, place, key, kind, digest)
                except SourceError:
                    if path is None or data is not None or again:
                        raise
                    # The remembered digest was not the file's (the miss path reads it and checks): a file
                    # changed under us, or a damaged memo. Forget it and ask once more.
                    ctx.counters.add("misses", -1)
                    self._digests.forget(path, artifact=serialized)
                    return self._load(source, kind, serialized=serialized, again=True)
        except EntryRefusedError as refused:  # a snapshot this engine may not load: as wasmtime says
            raise CompileError(name, str(refused), refused.wasmtime_error) from None
        found = Loaded.of(module, place.namespace.entry_path(key), ctx.mode, mapped)
        if loaded is None:
            if found.identity is not None:
                served_entries.put(module, (found.entry, found.identity))
            return module
        with loaded_guard:
            # Threads racing on one key all return the first module stored (one per engine and key).
            current = loaded.get(memo_key)
            if current is not None and current.module is not module and current.still_valid():
                return current.module
            released = remember(self.engine, loaded, memo_key, found)
        del released  # outside the guard: a released module's destructor runs here
        return module

    def _compiled_place(self, kind: Kind, digest: str, *, remembered: bool) -> tuple[Place, str]:
        """Where this engine's compile of an input with `digest` lives, and its key."""
        identity = self._ctx.engine_identity
        return (Place(self._ctx.namespace, identity.section, identity.fingerprint, serialized=False),
                self._key(cache_key, identity.fingerprint, kind, digest, remembered=remembered))

    def _key(self, derive: Callable[[str, str, str], str], fingerprint: str, kind: str, digest: str, *,
             remembered: bool) -> str:
        """`derive(fingerprint, kind, digest)`; for an input named by its path, remembered with its digest."""
        if not remembered:  # bytes: hashed already, the key costs nothing more
            return derive(fingerprint, kind, digest)
        return self._digests.key(derive, fingerprint, kind, digest, self._ctx.memo_root, writable=self._ctx.stores)

    def _loaded_modules(self) -> dict[tuple[str, str, str, str], Loaded]:
        loaded: dict[tuple[str, str, str, str], Loaded] = (loaded_by_engine.get(self.engine)
                                                            or loaded_by_engine.setdefault(self.engine, {}))
        return loaded

    # --- sources and digests ----------------------------------------------------------------------

    def _digest(self, name: str, path: str | None, data: bytes | memoryview | None) -> tuple[
            str, bytes | memoryview | None]:
        """The input's digest (for a path, remembered by file identity: a hit never re-reads it)."""
        if path is None:
            if data is None:  # source_of returns a path or the bytes, never neither
                raise TypeError("source: expected a path or bytes")
            return wasm_digest(data), data
        ctx = self._ctx
        return self._digests.digest(name, path, ctx.memo_root, writable=ctx.stores)

    def _artifact_digest(self, name: str, path: str | None, data: bytes | memoryview | None) -> tuple[
            str, str | None, bytes | memoryview | None]:
        """A serialized input's digest and its own engine fingerprint (None: not a Wasmtime artifact)."""
        if path is None:
            if data is None:
                raise TypeError("source: expected a path or bytes")
            return wasm_digest(data), artifact_fingerprint(data), data
        ctx = self._ctx
        digest, data, fingerprint = self._digests.digest_and_fingerprint(name, path, ctx.memo_root, writable=ctx.stores)
        return digest, fingerprint, data

    # --- management -------------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        """This object's counters and the root's usage record (one small read: no scan)."""
        from ._stats import CacheStats, read_usage  # noqa: PLC0415 - not on the hit path

        usage = None if self.disabled else read_usage(self.root)
        return CacheStats.of(self._counts(), usage.entries if usage else 0, usage.size_bytes if usage else 0)

    def _counts(self) -> dict[str, int]:
        """This object's counters by name (`CacheStats`' fields without the root's usage: no file read)."""
        count = self._counters.snapshot()
        count["rejected"] += self._miss_path.rejected if self._miss_path is not None else 0
        return count

    def gc(self, max_size: int | str | None = None) -> GcReport:
        """Evict least recently used entries (whole root) down to `max_size`; reap dead writers' temp files."""
        from ._maintenance import collect_garbage_locked  # noqa: PLC0415

        limit = self.max_size if max_size is None else resolve_max_size(max_size)
        return collect_garbage_locked(self.root, limit)

    def clear(self) -> int:
        """Remove every entry of every namespace; returns how many entries were removed."""
        from ._maintenance import clear_root  # noqa: PLC0415

        with loaded_guard:
            forget_all()
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


def _substituters_in_environment() -> bool:
    return any(os.environ.get(name) for name in ("WASMCACHE_SUBSTITUTERS", "WASMCACHE_SUBSTITUTER_ROOTS",
                                                  "WASMCACHE_SUBSTITUTER_CA"))


# --- check -> map: the one way an entry becomes a module (hits, and the miss path's publications) ---


def load_entry(ctx: CacheContext, place: Place, key: str, kind: Kind, *, locked: bool = False,
               digest: str | None = None) -> tuple[Any, Identity | None]:
    """The checked entry for `key` in `place`, deserialized, and the identity of the entry it mapped;
    (None, None) on a miss (bad entries are quarantined).

    `locked`: the caller holds the key's lock (flock is per open file: taking it again here on
    another fd would wait for ourselves). A snapshot this engine may not load raises
    EntryRefusedError: the entry is fine, the engine is another one. `digest`: the input's, which the
    entry's record must name (a key remembered wrongly would otherwise serve another input's entry).
    """
    namespace = place.namespace
    if not ctx.namespace_usable(namespace):
        return None, None
    if not ctx.namespace_holds(place) and _another_configurations(ctx, place):
        return None, None
    try:
        checked = namespace.check(key, kind=kind, section=place.section)
    except UntrustedEntryError as bad:
        if _another_configurations(ctx, place):
            return None, None
        _repair(ctx, namespace, key, bad.seen, bad.detail, locked=locked)
        return None, None
    if checked is None:
        return None, None
    if digest is not None and checked.record.wasm_digest != digest:
        checked.close()  # another input's good entry: not this input's, and not bad
        return None, None
    try:
        reason = unsafe_reason(checked.stat)  # the path is formatted only for the message
        if reason is not None and not ctx.unsafe(namespace.entry_path(key), reason):
            return None, None
        if checked.content_checked:
            if ctx.writable and namespace.rerecord(key, checked):
                log.info("wasmcache: entry %s moved or copied; content verified, identity re-recorded", key[:16])
            else:  # an image's read-only root whose files were copied: each process verifies by content
                log.info("wasmcache: entry %s moved or copied; content verified (its namespace cannot be written, "
                         "so its new identity is not recorded and every process verifies it again)", key[:16])
        try:
            module = _deserialize(ctx, checked, kind)
        except _EntryChangedError:
            log.warning("wasmcache: %s changed while being read; loading it again", namespace.entry_path(key))
            return None, None
        except EntryRefusedError as refused:
            if place.serialized:
                raise
            if _another_configurations(ctx, place):  # refused for its engine, not for its bytes
                return None, None
            _repair(ctx, namespace, key, Identity.of(checked.stat), f"wasmtime refused to load it: {refused}",
                    locked=locked)
            return None, None
    finally:
        checked.close()
    if time.time() - checked.record_stat.st_mtime > _TOUCH_INTERVAL:
        namespace.touch(key)
    return module, Identity.of(checked.stat)


def _another_configurations(ctx: CacheContext, place: Place) -> bool:
    """Whether `place` is another engine configuration's namespace, which an engine memo named by mistake (see
    `CacheContext.fingerprint_corrected`): then its entries are good, none is set aside, and the load asks again.
    Asked wherever a namespace disagrees with the engine: its engine file, a section check, wasmtime's refusal."""
    return not place.serialized and ctx.fingerprint_corrected(place)


def _out_of_resources(reason: str) -> bool:
    """wasmtime could not open or map a checked entry for want of descriptors or memory (`(os error N)` in
    its words: Rust's own rendering of an OS error), which says nothing about the entry."""
    import errno  # noqa: PLC0415 - only when wasmtime refused an entry

    _, found, rest = reason.rpartition("(os error ")
    number = rest.partition(")")[0]
    return bool(found) and number.isdigit() and int(number) in (errno.EMFILE, errno.ENFILE, errno.ENOMEM,
                                                                errno.EAGAIN)


def map_checked(ctx: CacheContext, checked: CheckedEntry, kind: Kind) -> Any:
    """A checked entry as a module of this engine, or EntryRefusedError: what the miss path asks of an
    identical entry before it links it (see `Namespace.publish`)."""
    return _deserialize(ctx, checked, kind)


def _deserialize(ctx: CacheContext, checked: CheckedEntry, kind: Kind) -> Any:
    import wasmtime  # noqa: PLC0415

    try:
        if ctx.mode == "mmap":
            # Map the inode behind our checked fd, not whatever the entry's path names by now.
            return _core.deserialize_file(kind, ctx.engine, f"{_FD_DIR}/{checked.fd}")
        try:
            data = read_fd(checked.fd, checked.stat.st_size)
            changed = Identity.of(os.fstat(checked.fd)) != Identity.of(checked.stat)
        except OSError as exc:
            raise _EntryChangedError from exc
        if changed:
            raise _EntryChangedError
        return _core.deserialize(kind, ctx.engine, data)
    except wasmtime.WasmtimeError as exc:
        reason = wasmtime_reason(exc)
        if _out_of_resources(reason):  # this process's limits, not the entry's fault: never set aside
            raise CacheError(f"cannot map a cache entry now: {reason}") from None
        raise EntryRefusedError(reason, exc) from None


def _repair(ctx: CacheContext, namespace: Namespace, key: str, seen: Identity | None, reason: str, *,
            locked: bool = False) -> None:
    """One warning, then quarantine the entry if it is still the file judged bad
    (`Namespace.quarantine_if_unchanged`)."""
    changeable = ctx.writable and os.access(namespace.path, os.W_OK)
    said = (str(namespace.entry_path(key)), seen)
    if said not in ctx.bad_entries_said:  # once per cache (the miss path finds the same entry again)
        ctx.bad_entries_said.add(said)
        log.warning("wasmcache: bad cache entry %s: %s; %s", said[0], reason,
                    "setting it aside and loading it anew" if changeable else
                    "compiling it in memory (it cannot be set aside: its directory cannot be written, a read-only "
                    "mount or chattr +i; `wasmcache doctor` says more)")
    if changeable and namespace.quarantine_if_unchanged(key, seen, reason, lock_held=locked):
        from ._maintenance import account_repair  # noqa: PLC0415 - only after a repair

        account_repair(ctx.root)
