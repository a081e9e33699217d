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
originals (captured by `_native` before anything is patched), and `uninstall()` puts them back.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, Final, Literal

import _wasmcache_hook

from . import _log, _native
from ._cache import CacheStats, ModuleCache
from ._errors import CacheError, CompileError, ConfigError, SourceError
from ._layout import is_entry_name, is_namespace_name
from ._log import log
from ._miss import Counters
from ._root import has_marker, resolve_root

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


Kind = Literal["module", "component"]
Mode = Literal["mmap", "memory"]

# The class attributes the drop-in replaces (each restored by identity on uninstall).
_PATCHED: Final = ("__init__", "from_file", "deserialize_file")
_ENGINE_ATTRIBUTE: Final = "_wasmcache_dropin_caches"
# What the program set on a Config (and the Engine built from it), see _record_configs.
_SETTINGS: Final = "_wasmcache_settings"  # [(property, value), ...] in the order set
_RAW: Final = "_wasmcache_raw_ffi"  # the config's pointer was used outside its properties: the record is incomplete
_INSIDE: Final = "_wasmcache_setting"  # inside one of our recorded setters
_LEFT_TO_WASMTIME: Final = "_wasmcache_left_to_wasmtime"  # wasmtime's own cache, settings unknown: not served
_COUNTERS: Final = len(Counters.NAMES)  # hits, misses, compiles, remote_hits, remote_misses, uploads, rejected

_state_lock = threading.RLock()
_active: DropIn | None = None
_installing = False
# kind (or "config", "engine": see _mark_own_caches) -> (class, originals, ours)
_patches: dict[str, tuple[type, dict[str, Any], dict[str, Any]]] = {}


class _EngineCache(ModuleCache):
    """The cache of one engine; hands its counters to the drop-in when it goes (with its engine)."""

    _dropin_owner: DropIn | None = None
    _dropin_retired = False

    def counters(self) -> list[int]:
        # The counters alone (no read of the root's usage record): this also runs from __del__.
        count = self._counters.snapshot()
        count["rejected"] += self._miss.rejected
        return [count[name] for name in Counters.NAMES]

    def __del__(self) -> None:
        owner = self._dropin_owner
        if owner is not None:
            owner._retire(self)  # noqa: SLF001


class DropIn:
    """What `wasmcache.install()` returns: the drop-in's settings, counters and off switch."""

    def __init__(self, root: str | os.PathLike[str] | None, *, mode: Mode, max_size: int | str | None,
                 strict: bool, automatic: bool = False, unusable: CacheError | None = None) -> None:
        # Opening the root here refuses an unsafe one now (strict), not at the program's first load.
        # `unusable`: the root was refused, or cannot be created ($WASMCACHE_AUTO's drop-in then still
        # keeps its promise that a program's own cache file is never mapped: deserialize_file copies,
        # nothing is cached).
        self.unusable = unusable
        self._root_cache = None if unusable is not None else _open_root_cache(root, mode, max_size, strict)
        if self._root_cache is not None and not self._root_cache.disabled and not has_marker(self._root_cache.root):
            self.unusable = CacheError(f"{self._root_cache.root} ({_why_unwritable(self._root_cache.root)})")
            self._root_cache = None
        self.root: Path | None = self._root_cache.root if self._root_cache is not None else _resolved(root)
        self.mode: Mode = mode
        self.max_size = self._root_cache.max_size if self._root_cache is not None else 0
        self.strict = strict
        self.automatic = automatic
        self.active = False
        self._lock = threading.RLock()
        self._live: weakref.WeakSet[_EngineCache] = weakref.WeakSet()
        self._retired = [0] * _COUNTERS
        self._reported = [0] * _COUNTERS  # what a forked parent had counted: its child reports only its own
        self._at_fork = self._reported
        self._warned: set[str] = set()
        self._root_prefix = os.path.realpath(self.root) + os.sep if self.root is not None else None

    @property
    def settings(self) -> tuple[str, str, int, bool]:
        return (str(self.root), self.mode, self.max_size, self.strict)

    def counts(self) -> dict[str, int]:
        """The counters summed over every engine the drop-in served (no read of the root)."""
        with self._lock:
            live = [cache for cache in list(self._live) if not cache._dropin_retired]  # noqa: SLF001
            totals = list(self._retired)
        for cache in live:
            totals = [a + b for a, b in zip(totals, cache.counters(), strict=True)]
        return dict(zip(Counters.NAMES, totals, strict=True))

    def stats(self) -> CacheStats:
        """Counters summed over every engine the drop-in served, plus what the root holds now."""
        count = self.counts()
        on_disk = self._root_cache.stats() if self._root_cache is not None else None
        return CacheStats(count["hits"], count["misses"], count["compiles"], on_disk.entries if on_disk else 0,
                          on_disk.size_bytes if on_disk else 0, count["remote_hits"], count["remote_misses"],
                          count["uploads"], count["rejected"])

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
            from . import _events  # noqa: PLC0415 - at exit, and only when something happened

            _events.append(self._root_cache.root, own)

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
                _restore_all()
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
        if self.unusable is not None:
            return None
        attached: dict[DropIn, _EngineCache] | None = getattr(engine, "__dict__", {}).get(_ENGINE_ATTRIBUTE)
        if attached is None:
            try:
                attached = engine.__dict__.setdefault(_ENGINE_ATTRIBUTE, {})
            except AttributeError:
                return None  # an engine that takes no attribute: wasmtime serves it as always
        if attached.get(self) is None and _uses_wasmtime_cache(engine):
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
            self._live.add(cache)
            return cache

    def _own_cache_fingerprint(self, engine: Any) -> bool:
        """Fingerprint an engine that has wasmtime's own cache without compiling with it.

        Our probe is a compile, and with `Config.cache` on it would write the probe module into
        the program's wasmtime cache and bump its stats on every run (issue 14). A twin engine
        built from the same recorded settings, without the cache, has the same engine section (the
        cache is not part of it); remembered in ROOT/engines by those settings, the next process
        neither builds the twin nor probes. False if the settings are not fully known.
        """
        settings = [(name, value) for name, value in engine.__dict__.get(_SETTINGS, ()) if name != "cache"]
        if engine.__dict__.get(_RAW) or not all(isinstance(v, (bool, int, str)) for _, v in settings):
            return False
        from ._fingerprint import (  # noqa: PLC0415
            EngineMemo,
            engine_section,
            memo_key_for,
            remember_fingerprint,
            remembered_section,
        )
        from ._layout import ENGINES_DIR  # noqa: PLC0415

        described = "wasmtime.Config(" + ", ".join(f"{name}={value!r}" for name, value in settings) + ")"

        def probe_twin() -> bytes:
            import wasmtime  # noqa: PLC0415

            config = wasmtime.Config()
            for name, value in settings:
                setattr(config, name, value)
            return engine_section(wasmtime.Engine(config))

        cache = self._root_cache
        memo = EngineMemo(cache.root / ENGINES_DIR, writable=cache.writable) if cache is not None else None
        try:
            section = remembered_section(memo_key_for(described), memo, described, probe_twin)
        except Exception as exc:  # a twin wasmtime refuses: the engine stays wasmtime's
            log.debug("wasmcache: no twin for an engine with wasmtime's cache: %s", exc)
            return False
        remember_fingerprint(engine, section)
        return True

    def _warn_once(self, topic: str, message: str) -> None:
        with self._lock:
            if topic in self._warned:
                return
            self._warned.add(topic)
        log.warning(message)  # the message is its own cause (a guest says each once)

    def _load(self, engine: Any, kind: Kind, source: str | bytes | bytearray) -> Any:
        """The cached object for `source`, None to let wasmtime's original do it (and report)."""
        cache = self._cache_for(engine)
        if cache is None:
            return None
        refused: BaseException | None = None
        try:
            return cache.load(source) if kind == "module" else cache.load_component(source)
        except CompileError as exc:
            refused = _wasmtime_error(exc, None)
            if refused is None:
                return None  # a core without `wasmtime_error`: the original compiles and raises it
        except SourceError:
            return None  # the original reads the file and raises exactly what wasmtime raises
        except (CacheError, OSError) as exc:
            self._warn_once(type(exc).__name__, f"wasmcache: drop-in falls back to wasmtime: {exc}")
            return None
        raise refused  # outside the handler: no wasmcache exception as its __context__

    def _load_precompiled(self, engine: Any, kind: Kind, path: str) -> Any:
        # A snapshot is keyed by the artifact's own engine section: no probe of this engine.
        cache = self._cache_for(engine)
        load_precompiled = getattr(cache, "load_precompiled", None)
        if load_precompiled is None:
            return None  # the caller deserializes a private copy: still never a mapping of `path`
        refused: BaseException | None = None
        try:
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
        raise refused

    def owns(self, path: str) -> bool:
        """`path` is one of our entries: published once, replaced only by rename, safe to map."""
        if self._root_prefix is None:
            return False
        try:
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
    says once what that means for this program, see DropIn.__init__)."""
    with _log.held() as held:
        cache = ModuleCache(root, mode=mode, max_size=max_size, strict=strict)
    if cache.disabled or has_marker(cache.root):
        _log.replay(held)
    return cache


def _resolved(root: str | os.PathLike[str] | None) -> Path | None:
    try:
        return resolve_root(root)
    except CacheError:
        return None  # the environment names no usable root: the drop-in says so, and has none


def _why_unwritable(root: Path) -> str:
    """Why wasmcache could not set up `root`, in a few words (the nearest existing directory's state)."""
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
    return f"{where} could not be set up"


def _uses_wasmtime_cache(engine: Any) -> bool:
    return any(name == "cache" for name, _ in engine.__dict__.get(_SETTINGS, ()))


def _wasmtime_error(exc: CompileError, path: str | None) -> BaseException | None:
    """The error wasmtime raised, as the program would have seen it: no wasmcache frames in its
    traceback, and the program's path where wasmtime named the fd of our checked entry."""
    original = getattr(exc, "wasmtime_error", None)
    if not isinstance(original, BaseException):
        return None
    if path is not None and "/proc/self/fd/" in str(original):
        import re  # noqa: PLC0415

        import wasmtime  # noqa: PLC0415

        original = wasmtime.WasmtimeError(re.sub(r"/proc/self/fd/\d+", lambda _m: path, str(original)))
    return original.with_traceback(None)


# --- the patches ----------------------------------------------------------------------------------


def _serving() -> DropIn | None:
    dropin = _active
    return dropin if dropin is not None and dropin.active else None


def _deserialize_copy(cls: Any, engine: Any, path: str, deserialize: Callable[..., Any]) -> Any:
    """What `deserialize_file` does, from a private copy of the bytes (nothing stays mapped)."""
    import wasmtime  # noqa: PLC0415

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:  # wasmtime's own wording, so `except WasmtimeError` sees what it always saw
        raise wasmtime.WasmtimeError(f"failed to open file\n\nCaused by:\n    {exc.strerror} (os error {exc.errno})\n"
                                     ) from None
    return deserialize(cls, engine, data)


def _make_patches(kind: Kind, originals: dict[str, Any]) -> dict[str, Any]:
    import wasmtime  # noqa: PLC0415
    from wasmtime import _ffi  # noqa: PLC0415
    from wasmtime._wat2wasm import _to_wasm  # noqa: PLC0415 - wasmtime's own WAT/bytes check

    engine_type = wasmtime.Engine
    clone = _ffi.wasmtime_module_clone if kind == "module" else _ffi.wasmtime_component_clone
    original_init = originals["__init__"]
    original_from_file = originals["from_file"].__func__
    original_deserialize_file = originals["deserialize_file"].__func__
    original_deserialize = originals["deserialize"].__func__

    def __init__(self: Any, engine: Any, wasm: Any) -> None:  # noqa: N807 - it is the constructor
        dropin = _serving()
        if dropin is None or not isinstance(engine, engine_type):
            original_init(self, engine, wasm)
            return
        binary = _to_wasm(wasm)  # TypeError / WasmtimeError exactly as wasmtime raises them
        cached = dropin._load(engine, kind, binary)  # noqa: SLF001
        if cached is None:
            original_init(self, engine, binary)
            return
        self._set_ptr(clone(cached.ptr()))

    def from_file(cls_: Any, engine: Any, path: Any) -> Any:
        dropin = _serving()
        if (dropin is None or not isinstance(engine, engine_type)
                or cls_.__init__ is not __init__ or not isinstance(path, (str, bytes, os.PathLike))):
            return original_from_file(cls_, engine, path)
        name = os.fspath(path)
        cached = dropin._load(engine, kind, os.fsdecode(name))  # noqa: SLF001
        if cached is None:
            return original_from_file(cls_, engine, path)
        return cls_._from_ptr(clone(cached.ptr()))  # noqa: SLF001

    def deserialize_file(cls_: Any, engine: Any, path: Any) -> Any:
        dropin = _serving()
        if (dropin is None or not isinstance(engine, engine_type) or not isinstance(path, str) or "\0" in path
                or dropin.owns(path)):
            return original_deserialize_file(cls_, engine, path)
        cached = dropin._load_precompiled(engine, kind, path)  # noqa: SLF001
        if cached is None:
            return _deserialize_copy(cls_, engine, path, original_deserialize)
        return cls_._from_ptr(clone(cached.ptr()))  # noqa: SLF001

    pairs: list[tuple[Any, Any]] = [(__init__, original_init), (from_file, original_from_file),
                                    (deserialize_file, original_deserialize_file)]
    for ours, original in pairs:
        ours.__doc__ = original.__doc__
        ours.__qualname__ = original.__qualname__
        ours.__wrapped__ = original
    return {"__init__": __init__, "from_file": classmethod(from_file),
            "deserialize_file": classmethod(deserialize_file)}


def _apply(kind: Kind) -> None:
    """Replace the constructors of `kind`'s class (under _state_lock); again for a kind: nothing."""
    if kind in _patches:
        return
    # The core's own calls go through _native's originals: captured before we patch anything.
    cls = _native.originals(kind)["class"]
    # What is in place now (wasmtime's, or another tool's instrumentation of it) is what a call
    # we do not serve goes to, and what uninstall puts back.
    current = {name: cls.__dict__.get(name) for name in (*_PATCHED, "deserialize")}
    if not all(isinstance(current[name], classmethod) for name in ("from_file", "deserialize_file", "deserialize")):
        log.warning("wasmcache: wasmtime.%s has an unexpected shape; the drop-in leaves it alone", cls.__name__)
        return
    originals = {name: current[name] for name in _PATCHED}
    ours = _make_patches(kind, current)
    for name, function in ours.items():
        setattr(cls, name, function)
    _patches[kind] = (cls, originals, ours)


def _record_configs() -> None:
    """Record what the program sets on each Config, and give it to the Engine built from it (under
    _state_lock): wasmtime cannot read a Config back, and an engine with wasmtime's own cache
    enabled must never run our probe compile (see _own_cache_fingerprint).

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
            state.setdefault(_SETTINGS, []).append((name, value))

        return property(prop.fget, fset, prop.fdel, prop.__doc__)

    def ptr(self: Any) -> Any:
        if not self.__dict__.get(_INSIDE):
            self.__dict__[_RAW] = True  # someone calls the C API on this config: we cannot know what
        return managed_ptr(self)

    def __init__(self: Any, config: Any = None) -> None:  # noqa: N807 - it is the constructor
        state = getattr(config, "__dict__", None)
        if state is None:
            engine_init(self, config)
            return
        record = (list(state.get(_SETTINGS, ())), bool(state.get(_RAW)))
        state[_INSIDE] = state.get(_INSIDE, 0) + 1  # Engine consumes the config's pointer: not a raw call
        try:
            engine_init(self, config)
        finally:
            state[_INSIDE] -= 1
        self.__dict__[_SETTINGS], self.__dict__[_RAW] = record

    __init__.__doc__, __init__.__qualname__ = engine_init.__doc__, engine_init.__qualname__
    ours_config: dict[str, Any] = {name: recording(name, prop) for name, prop in properties.items()}
    ours_config["ptr"] = ptr
    originals_config: dict[str, Any] = {name: config_cls.__dict__.get(name) for name in ours_config}
    for name, value in ours_config.items():
        setattr(config_cls, name, value)
    setattr(engine_cls, "__init__", __init__)  # noqa: B010 - a class attribute of another package
    _patches["config"] = (config_cls, originals_config, ours_config)
    _patches["engine"] = (engine_cls, {"__init__": engine_init}, {"__init__": __init__})


def _restore_all() -> None:
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


def _patch_components(_component_package: Any) -> None:
    with _state_lock:
        if _serving() is not None:
            _apply("component")


# --- the public switch ----------------------------------------------------------------------------


def _disabled() -> bool:
    from ._root import disabled_by_environment  # noqa: PLC0415

    return disabled_by_environment()


_handles: list[DropIn] = []  # every drop-in this process installed: each reports at exit


def _record_exits() -> None:
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
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    _handles.append(dropin)


def _requested_settings(root: str | os.PathLike[str] | None, mode: str, max_size: int | str | None,
                        strict: bool) -> tuple[str, str, int, bool]:
    from ._root import resolve_max_size, resolve_root  # noqa: PLC0415

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
            try:
                dropin = DropIn(root, mode=mode, max_size=max_size, strict=strict, automatic=_automatic)
            except CacheError as exc:
                if not _automatic:
                    raise
                dropin = DropIn(root, mode=mode, max_size=max_size, strict=strict, automatic=True, unusable=exc)
        finally:
            _installing = False
        if not _automatic:
            _log.end_guest()  # the program installed wasmcache itself: its logging decides again
        _active = dropin
        if _disabled():
            log.info("wasmcache: $WASMCACHE_DISABLE is set: the drop-in stays off")
            return dropin
        if dropin.unusable is not None:
            # Once per process, and what it means for this program (what the user should fix).
            log.warning("wasmcache: drop-in cannot use its cache root %s; nothing is cached: wasmtime compiles as "
                        "usual and programs' own .cwasm files are loaded as copies, never mapped", dropin.unusable)
        dropin.active = True
        _apply("module")
        _record_configs()
        _wasmcache_hook.when_imported("wasmtime.component", _patch_components)
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
    if _disabled() or _installing or _active is not None:
        return None  # an explicit install() is under way (it imported wasmtime) or done: it wins
    _log.become_guest()  # a program that never asked for wasmcache: nothing through its logging
    try:
        return install(_automatic=True)
    except (CacheError, OSError) as exc:
        log.warning("wasmcache: drop-in not active: %s", exc)
        return None
