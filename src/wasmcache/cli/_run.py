"""`wasmcache run` (interim: the click version, until the wasmtime-compatible runner lands)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ._group import (
    cache_dir_option,
    cli,
    engine_options,
    fail,
    input_kind,
    open_cache,
    remote_kwargs,
    remote_options,
    say,
    settings_of,
)

if TYPE_CHECKING:
    import wasmtime

_TRAP_EXIT = 134  # what `wasmtime run` exits with when the guest traps (128 + SIGABRT)


def _fuel(wasm: tuple[str, ...]) -> int | None:
    fuel = None
    for raw in wasm:
        for item in raw.split(","):
            name, _, value = item.partition("=")
            if name.strip() == "fuel":
                fuel = int(value)
    return fuel


@cli.command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": False})
@click.option("--dir", "dirs", multiple=True, metavar="HOST[::GUEST]", help="Preopen a host directory for the guest.")
@click.option("--env", "envs", multiple=True, metavar="NAME[=VAL]", help="Set (or inherit) an environment variable.")
@click.option("--invoke", metavar="NAME", help="Call this exported function instead of `_start`.")
@engine_options
@click.option("--memory", is_flag=True, help="Load the entry into memory instead of mapping it.")
@cache_dir_option
@remote_options
@click.argument("file", type=click.Path(path_type=Path))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(
    dirs: tuple[str, ...], envs: tuple[str, ...], invoke: str | None, wasm: tuple[str, ...],
    codegen: tuple[str, ...], optimize: tuple[str, ...], memory: bool, cache_dir: Path | None,
    remote: str | None, signing_key: str | None, trusted_keys: tuple[str, ...], file: Path, args: tuple[str, ...],
) -> None:
    """Run a WASI program through the cache, like `wasmtime run` (exit code = the guest's)."""
    import wasmtime  # noqa: PLC0415

    if input_kind(file) == "component":
        fail(f"{file}: is a component; `run` runs core wasm modules (use `wasmcache compile` to cache it)")
    cache = open_cache(cache_dir, settings_of(wasm, codegen, optimize), memory=memory,
                   remote=remote_kwargs(remote, signing_key, trusted_keys))
    module = cache.load(file)
    store = wasmtime.Store(cache.engine)
    fuel = _fuel(wasm)
    if fuel is not None:
        store.set_fuel(fuel)
    wasi = wasmtime.WasiConfig()
    # WASI argv is UTF-8: a non-UTF-8 name (surrogate-escaped by Python) reaches the guest with U+FFFD.
    wasi.argv = [_utf8(a) for a in (str(file), *args)]
    wasi.env = [_env_pair(item) for item in envs]
    wasi.inherit_stdin()
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    for spec in dirs:
        host, sep, guest = spec.partition("::")
        if not os.path.isdir(host):
            fail(f"--dir {spec}: {host} is not a directory")
        wasi.preopen_dir(host, guest if sep else host)
    store.set_wasi(wasi)
    linker = wasmtime.Linker(cache.engine)
    linker.define_wasi()
    code = 0
    try:
        instance = linker.instantiate(store, module)
        exports = instance.exports(store)
        if invoke is not None:
            _invoke(store, exports, invoke, args, file)
        else:
            start: Any = exports.get("_start")
            if not isinstance(start, wasmtime.Func):
                fail(f"{file}: exports no `_start`; name a function with --invoke")
            start(store)
    except wasmtime.ExitTrap as exit_trap:
        code = exit_trap.code
    except wasmtime.Trap as trap:
        if sys.stdout is not None:
            sys.stdout.flush()
        say(f"wasmcache: error: {file}: wasm trap: {trap.message}", err=True)
        code = _TRAP_EXIT
    except wasmtime.WasmtimeError as exc:
        if sys.stdout is not None:
            sys.stdout.flush()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown error"
        say(f"wasmcache: error: {file}: {first}", err=True)
        code = _TRAP_EXIT if "wasm trap" in str(exc) else 1
    if sys.stdout is not None:
        sys.stdout.flush()
    sys.exit(code)


def _env_pair(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not name:
        fail(f"--env {item}: expected NAME=VALUE")
    return (name, value) if sep else (name, os.environ.get(name, ""))


def _invoke(store: wasmtime.Store, exports: Any, name: str, args: tuple[str, ...], file: Path) -> None:
    import wasmtime  # noqa: PLC0415

    try:
        func = exports[name]
    except KeyError:
        fail(f"{file}: no export named {name!r}")
    if not isinstance(func, wasmtime.Func):
        fail(f"{file}: export {name!r} is not a function")
    params = func.type(store).params
    if len(params) != len(args):
        fail(f"{file}: {name} takes {len(params)} arguments, got {len(args)}")
    values: list[Any] = []
    for ty, raw in zip(params, args, strict=True):
        try:
            values.append(float(raw) if str(ty) in ("f32", "f64") else int(raw, 0))
        except ValueError:
            fail(f"{file}: argument {raw!r} is not a valid {ty}")
    result = func(store, *values)
    if result is None:
        return
    for value in result if isinstance(result, list) else [result]:
        say(value)


def _utf8(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
