"""Running a component as a WASI 0.2 command: its `wasi:cli/run@0.2.x` `run` function.

As in `wasmtime run`: the same argv, environment, preopens and stdio as a module; `run`
returning `err` exits 1 (silently), `ok` exits 0, `wasi:cli/exit` exits with its code, a trap
exits 134. `wasmtime.component` (~10 ms to import) is imported only here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from . import _wasi
from ._outcome import ERROR_EXIT, USAGE_EXIT, RunError

if TYPE_CHECKING:
    from ._args import Options

# Export names match semver-compatibly: this finds `wasi:cli/run@0.2.0` ... `@0.2.9`.
RUN_INTERFACE: Final = "wasi:cli/run@0.2.0"


def run_component(engine: Any, component: Any, options: Options, file: str) -> int:
    import wasmtime  # noqa: PLC0415
    from wasmtime import component as cm  # noqa: PLC0415

    if options.invoke is not None:
        raise RunError(f"{file}: --invoke on a component takes a WAVE-encoded call (`wasmtime run --invoke "
                       "'name(args)'`), which wasmcache run does not implement; run the component's "
                       "wasi:cli/run export without --invoke, or use wasmtime run", USAGE_EXIT)
    if options.preloads:
        raise RunError(f"{file}: --preload cannot be used with components", USAGE_EXIT)
    if options.unknown_imports_default:
        raise RunError(f"{file}: cannot use -W unknown-imports-default with components", USAGE_EXIT)
    interface = component.get_export_index(RUN_INTERFACE)
    if interface is None:
        raise RunError(f"{file}: no exported instance named `wasi:cli/run@0.2.x` (not a WASI 0.2 command "
                       "component)", ERROR_EXIT)
    store = _wasi.new_store(engine, options)
    linker = cm.Linker(engine)
    if options.wasi:
        # set_wasi before instantiating: a WASI import without a WASI context panics across the FFI.
        store.set_wasi(_wasi.wasi_config(options, file))
        linker.add_wasip2()
        if options.http:
            linker.add_wasi_http()
            store.set_wasi_http()
    deadline = _wasi.Deadline(engine, options, file)
    with deadline:
        try:
            if options.unknown_imports_trap:
                linker.define_unknown_imports_as_traps(component)
            instance = linker.instantiate(store, component)
            run_index = instance.get_export_index(store, "run", interface)
            func = instance.get_func(store, run_index) if run_index is not None else None
            if func is None:
                raise RunError(f"{file}: `{RUN_INTERFACE}` exports no `run` function", ERROR_EXIT)
            _check_run_type(func.type(store), file)
            result = func(store)
            func.post_return(store)
        except wasmtime.WasmtimeError as exc:  # ExitTrap (wasi:cli/exit) is one
            return _wasi.guest_error(exc, file, deadline)
    return 0 if getattr(result, "tag", None) == "ok" else ERROR_EXIT


def _check_run_type(functype: Any, file: str) -> None:
    """`run: func() -> result`, or the call's conversions would fail with an obscure message."""
    from wasmtime.component import ResultType  # noqa: PLC0415

    result = functype.result
    if functype.params or not isinstance(result, ResultType) or result.ok is not None or result.err is not None:
        raise RunError(f"{file}: `{RUN_INTERFACE}` `run` is not `func() -> result`", ERROR_EXIT)
