"""Running a core module: WASI preview 1, `_initialize`, then `--invoke` or the default export.

The order is wasmtime's (`RunCommand::load_main_module`): instantiate (the start function runs
here), call `_initialize` if exported, then the `--invoke` function, else the export named ""
or `_start` if there is one (called as `--invoke` would call it: arguments parsed, results
printed). A module with neither is instantiated and exits 0.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from . import _wasi
from ._outcome import ERROR_EXIT, RunError

if TYPE_CHECKING:
    import wasmtime

    from wasmcache import ModuleCache

    from ._args import Options
    from ._invoke import Call


def run_module(cache: ModuleCache, module: wasmtime.Module, options: Options, file: str) -> int:
    import wasmtime  # noqa: PLC0415

    engine = cache.engine
    invoke: Call | None = None
    if options.invoke is not None:
        from ._invoke import prepare  # noqa: PLC0415

        invoke = prepare(module, options.invoke, options.guest_args, file)
    store = _wasi.new_store(engine, options)
    linker = wasmtime.Linker(engine)
    if options.wasi:
        store.set_wasi(_wasi.wasi_config(options, file))
        linker.define_wasi()
    preloads = [(name, _preload(cache, name, path)) for name, path in options.preloads]
    deadline = _wasi.Deadline(engine, options, file)
    with deadline:
        try:
            for name, preloaded in preloads:  # instantiated here: their start functions run now
                linker.define_module(store, name, preloaded)
            if options.unknown_imports_trap:
                linker.define_unknown_imports_as_traps(module)
            if options.unknown_imports_default:
                linker.define_unknown_imports_as_default_values(store, module)
            instance = linker.instantiate(store, module)
            lines = _run_instance(store, instance, invoke, options, file)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:  # ExitTrap is a WasmtimeError
            return _wasi.guest_error(exc, file, deadline)
    _print_results(lines)
    return 0


def _run_instance(store: wasmtime.Store, instance: wasmtime.Instance, invoke: Call | None, options: Options,
                  file: str) -> list[str]:
    import wasmtime  # noqa: PLC0415

    exports = instance.exports(store)
    initialize = exports.get("_initialize")
    if isinstance(initialize, wasmtime.Func):
        functype = initialize.type(store)
        if functype.params or functype.results:
            raise RunError(f"{file}: `_initialize` must take no parameters and return nothing")
        initialize(store)
    if invoke is None:
        default = exports.get("")
        default = default if isinstance(default, wasmtime.Func) else exports.get("_start")
        if not isinstance(default, wasmtime.Func):
            return []
        functype = default.type(store)
        if not functype.params and not functype.results:
            default(store)  # the usual `_start`: nothing to parse or print
            return []
        from ._invoke import prepare_type  # noqa: PLC0415

        invoke = prepare_type(functype, "command default", options.guest_args, file)
        func = default
    else:
        found = exports.get(invoke.name)
        if not isinstance(found, wasmtime.Func):  # checked on the module's types; an instance agrees
            raise RunError(f"{file}: no func export named `{invoke.name}` found")
        func = found
    from ._invoke import call  # noqa: PLC0415 - a raw call: no value type is ever asked for its kind

    return call(store, func, invoke.params, invoke.args, invoke.results)


def _preload(cache: ModuleCache, name: str, path: str) -> wasmtime.Module:
    from ._load import read_input  # noqa: PLC0415

    kind, source = read_input(path)
    if kind != "module":
        raise RunError(f"--preload {name}={path}: components cannot be loaded with `--preload`", 2)
    return cache.load(source)


def _print_results(lines: list[str]) -> None:
    """One result per line on stdout, written straight to fd 1, after the guest's own output."""
    data = "".join(line + "\n" for line in lines).encode()
    try:
        while data:
            data = data[os.write(1, data):]
    except OSError as exc:
        raise RunError(f"cannot write the results to stdout: {exc.strerror or exc}", ERROR_EXIT) from None
