"""`--invoke NAME ARGS` on a core module: check, parse, call, print, as `wasmtime run` does.

wasmtime-py cannot be used as is here: asking a v128 (or any reference other than
funcref/externref) parameter for its kind *aborts the process* inside the C API
(`wasm_valtype_kind`: "support for v128 is not implemented"), and its `Func.__call__` asks.
So types are told apart with `wasmtime_wasm_valtype_equal` (safe for every type), the
function is called through `wasmtime_func_call` directly, and results are read by the
kinds wasmtime wrote into them (v128 and every reference kind included).
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, Final

from ._outcome import RunError

if TYPE_CHECKING:
    import wasmtime

# wasmtime_val_t kinds (wasmtime/val.h)
_KIND_NUMBERS: Final = {"i32": 0, "i64": 1, "f32": 2, "f64": 3}
_V128, _FUNCREF, _EXTERNREF, _ANYREF, _EXNREF = 4, 5, 6, 7, 8
_REF_FIELDS: Final = {_FUNCREF: ("funcref", "funcref"), _EXTERNREF: ("externref", "externref"),
                      _ANYREF: ("anyref", "anyref"), _EXNREF: ("exnref", "exnref")}
# How wasmtime names the parameter types it cannot parse ("unsupported argument type ...").
_UNSUPPORTED_NAMES: Final = {"v128": "v128", "funcref": "(ref null func)", "externref": "(ref null extern)",
                             "ref": "(a reference other than funcref/externref)"}


def classify(valtype: Any) -> str:
    """"i32" ... "f64", "v128", "funcref", "externref", or "ref" (any other reference), without aborting."""
    import wasmtime  # noqa: PLC0415
    from wasmtime import _ffi as ffi  # noqa: PLC0415

    equal = getattr(ffi, "wasmtime_wasm_valtype_equal", None)
    v128 = getattr(ffi, "wasmtime_wasm_valtype_v128", None)
    if equal is None or v128 is None:  # pragma: no cover - wasmtime-py without these C functions
        raise RunError("--invoke: this wasmtime-py cannot tell value types apart safely; upgrade wasmtime")
    known = {"i32": wasmtime.ValType.i32(), "i64": wasmtime.ValType.i64(), "f32": wasmtime.ValType.f32(),
             "f64": wasmtime.ValType.f64(), "funcref": wasmtime.ValType.funcref(),
             "externref": wasmtime.ValType.externref()}
    for name, other in known.items():
        if equal(valtype.ptr(), other.ptr()):
            return name
    probe = v128()
    try:
        if equal(valtype.ptr(), probe):
            return "v128"
    finally:
        ffi.wasm_valtype_delete(probe)
    return "ref"


class Call:
    """An exported function of a module with its parameter kinds and parsed arguments."""

    def __init__(self, name: str, params: list[str], results: int, args: list[Any]) -> None:
        self.name = name
        self.params = params
        self.results = results
        self.args = args


def prepare(module: wasmtime.Module, name: str, words: list[str], file: str) -> Call:
    """Check `name` and parse `words` before anything runs (wasmtime's own messages and exit code 1)."""
    import wasmtime  # noqa: PLC0415

    export = next((e for e in module.exports if e.name == name), None)
    functype = export.type if export is not None else None
    if not isinstance(functype, wasmtime.FuncType):
        raise RunError(f"{file}: no func export named `{name}` found")
    return prepare_type(functype, name, words, file)


def prepare_type(functype: wasmtime.FuncType, name: str, words: list[str], file: str) -> Call:
    from ._outcome import BadValueError  # noqa: PLC0415
    from ._values import parse_float, parse_int  # noqa: PLC0415 - only for functions with parameters

    params = [classify(t) for t in functype.params]
    args: list[Any] = []
    for i, kind in enumerate(params):
        if kind not in _KIND_NUMBERS:
            raise RunError(f"{file}: --invoke {name}: unsupported argument type {_UNSUPPORTED_NAMES[kind]}")
        if i >= len(words):
            raise RunError(f"{file}: not enough arguments for `{name}`")
        word = words[i]
        try:
            word.encode("utf-8")
        except UnicodeEncodeError:
            raise RunError(f"{file}: --invoke {name}: argument is not valid utf-8: {word!r}") from None
        try:
            args.append(parse_int(word, kind) if kind in ("i32", "i64") else parse_float(word, kind))
        except BadValueError as exc:
            raise RunError(f"{file}: --invoke {name}: argument {word!r} for an {kind} parameter: {exc}") from None
    # Like wasmtime, words beyond the function's parameters are ignored (they still are the guest's argv).
    return Call(name, params, len(functype.results), args)


def call(store: wasmtime.Store, func: wasmtime.Func, params: list[str], args: list[Any], results: int) -> list[str]:
    """Call `func` with `args` (kinds `params`); its results printed as wasmtime prints them."""
    import wasmtime  # noqa: PLC0415
    from wasmtime import _ffi as ffi  # noqa: PLC0415

    raw_params = (ffi.wasmtime_val_t * max(len(args), 1))()
    for slot, kind, value in zip(raw_params, params, args, strict=False):  # raw_params has a spare slot
        slot.kind = _KIND_NUMBERS[kind]
        setattr(slot.of, kind, value)
    raw_results = (ffi.wasmtime_val_t * max(results, 1))()
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    error = ffi.wasmtime_func_call(store._context(), ctypes.byref(func._func), raw_params, len(args),  # noqa: SLF001
                                   raw_results, results, ctypes.byref(trap))
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)  # noqa: SLF001
    if trap:
        raise wasmtime.Trap._from_ptr(trap)  # noqa: SLF001
    lines = [_format(raw_results[i]) for i in range(results)]
    for i in range(results):
        if int(raw_results[i].kind) in _REF_FIELDS:
            ffi.wasmtime_val_unroot(ctypes.byref(raw_results[i]))
    return lines


def _format(raw: Any) -> str:
    from ._values import format_float, format_v128  # noqa: PLC0415 - only for functions with results

    kind = int(raw.kind)
    if kind == _KIND_NUMBERS["i32"]:
        return str(raw.of.i32)
    if kind == _KIND_NUMBERS["i64"]:
        return str(raw.of.i64)
    if kind == _KIND_NUMBERS["f32"]:
        return format_float(raw.of.f32, "f32")
    if kind == _KIND_NUMBERS["f64"]:
        return format_float(raw.of.f64, "f64")
    if kind == _V128:
        return format_v128(bytes(raw.of.v128))
    if kind in _REF_FIELDS:
        field, label = _REF_FIELDS[kind]
        is_null = getattr(raw.of, field).store_id == 0
        return f"<null {label}>" if is_null else f"<{label}>"
    return f"<value of kind {kind}>"
