"""The `wasmcache` command: `run` and `compile` like `wasmtime`, cache management like ccache.

Only this module imports click and rich, so `import wasmcache` in a library stays light.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from ._cli_remote import register as _register_remote_commands
from ._cli_remote import remote_kwargs, remote_options
from ._engine import EngineSettings
from ._errors import CacheError
from ._version import __version__

if TYPE_CHECKING:
    from collections.abc import Callable

    import wasmtime

    from ._cache import ModuleCache

_TRAP_EXIT = 134  # what `wasmtime run` exits with when the guest traps (128 + SIGABRT)


class _CliError(Exception):
    """A CLI-level error: printed as one line, exit code 2."""


def _fail(message: str) -> NoReturn:
    raise _CliError(message)


def _console() -> Any:
    from rich.console import Console  # noqa: PLC0415

    return Console(highlight=False)


def _err_console() -> Any:
    from rich.console import Console  # noqa: PLC0415

    return Console(stderr=True, highlight=False)


def _asdict(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict  # noqa: PLC0415 - 5 ms to import; only --json output needs it

    result: dict[str, Any] = asdict(obj)
    return result


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# --- shared options -----------------------------------------------------------------------------

cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Cache root (default: $WASMCACHE_DIR, else the platform user cache directory).",
)


def _engine_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("-O", "optimize", multiple=True, metavar="opt-level=0|1|2|s",
                     help="Optimization options, as in `wasmtime run -O`.")(f)
    f = click.option("-C", "codegen", multiple=True, metavar="compiler=cranelift|winch",
                     help="Code generation options, as in `wasmtime run -C`.")(f)
    return click.option("-W", "wasm", multiple=True, metavar="FEATURE=y|n",
                        help="Wasm features and fuel/epoch options, as in `wasmtime run -W`.")(f)


def _settings(wasm: tuple[str, ...], codegen: tuple[str, ...], optimize: tuple[str, ...]) -> EngineSettings | None:
    settings = EngineSettings.from_options(wasm, codegen, optimize)
    return None if settings == EngineSettings() else settings


def _fuel(wasm: tuple[str, ...]) -> int | None:
    fuel = None
    for raw in wasm:
        for item in raw.split(","):
            name, _, value = item.partition("=")
            if name.strip() == "fuel":
                fuel = int(value)
    return fuel


def _cache(cache_dir: Path | None, settings: EngineSettings | None = None, *, memory: bool = False,
           remote: dict[str, Any] | None = None) -> ModuleCache:
    from ._cache import ModuleCache  # noqa: PLC0415

    return ModuleCache(cache_dir, engine=settings, mode="memory" if memory else "mmap", **(remote or {}))


def _root(cache_dir: Path | None) -> Path:
    from ._layout import default_root  # noqa: PLC0415

    if cache_dir is not None and "\0" in str(cache_dir):
        _fail(f"--cache-dir {str(cache_dir)!r}: a path cannot contain a NUL byte")
    return cache_dir if cache_dir is not None else default_root()


def _require_file(path: Path) -> None:
    if "\0" in str(path):
        _fail(f"{str(path)!r}: a path cannot contain a NUL byte")
    if not path.is_file():
        _fail(f"{path}: no such file")


def _kind_of(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        _fail(f"{path}: cannot read: {exc.strerror}")
    if head[:4] == b"\0asm" and head[4:8] != b"\x01\0\0\0":
        return "component"
    return "module"


# --- the group ----------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wasmcache")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@click.option("-v", "--verbose", is_flag=True, help="Log what the cache does (hits, compiles, repairs).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """A crash-safe cache of precompiled WebAssembly modules for Wasmtime."""
    ctx.obj = {"debug": debug}
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


# --- run ----------------------------------------------------------------------------------------


@cli.command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": False})
@click.option("--dir", "dirs", multiple=True, metavar="HOST[::GUEST]", help="Preopen a host directory for the guest.")
@click.option("--env", "envs", multiple=True, metavar="NAME[=VAL]", help="Set (or inherit) an environment variable.")
@click.option("--invoke", metavar="NAME", help="Call this exported function instead of `_start`.")
@_engine_options
@click.option("--memory", is_flag=True, help="Load the entry into memory instead of mapping it.")
@cache_dir_option
@remote_options
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(
    dirs: tuple[str, ...], envs: tuple[str, ...], invoke: str | None, wasm: tuple[str, ...],
    codegen: tuple[str, ...], optimize: tuple[str, ...], memory: bool, cache_dir: Path | None,
    remote: str | None, signing_key: str | None, trusted_keys: tuple[str, ...], file: Path, args: tuple[str, ...],
) -> None:
    """Run a WASI program through the cache, like `wasmtime run` (exit code = the guest's)."""
    import wasmtime  # noqa: PLC0415

    _require_file(file)
    if _kind_of(file) == "component":
        _fail(f"{file}: is a component; `run` runs core wasm modules (use `wasmcache compile` to cache it)")
    cache = _cache(cache_dir, _settings(wasm, codegen, optimize), memory=memory,
                   remote=remote_kwargs(remote, signing_key, trusted_keys))
    module = cache.load(file)
    store = wasmtime.Store(cache.engine)
    fuel = _fuel(wasm)
    if fuel is not None:
        store.set_fuel(fuel)
    wasi = wasmtime.WasiConfig()
    wasi.argv = [str(file), *args]
    wasi.env = [_env_pair(item) for item in envs]
    wasi.inherit_stdin()
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    for spec in dirs:
        host, sep, guest = spec.partition("::")
        if not os.path.isdir(host):
            _fail(f"--dir {spec}: {host} is not a directory")
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
                _fail(f"{file}: exports no `_start`; name a function with --invoke")
            start(store)
    except wasmtime.ExitTrap as exit_trap:
        code = exit_trap.code
    except wasmtime.Trap as trap:
        sys.stdout.flush()
        _err_console().print(f"[bold red]error:[/] {file}: wasm trap: {trap.message}", soft_wrap=True)
        code = _TRAP_EXIT
    except wasmtime.WasmtimeError as exc:
        sys.stdout.flush()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown error"
        _err_console().print(f"[bold red]error:[/] {file}: {first}", soft_wrap=True)
        code = _TRAP_EXIT if "wasm trap" in str(exc) else 1
    sys.stdout.flush()
    sys.exit(code)


def _env_pair(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not name:
        _fail(f"--env {item}: expected NAME=VALUE")
    return (name, value) if sep else (name, os.environ.get(name, ""))


def _invoke(store: wasmtime.Store, exports: Any, name: str, args: tuple[str, ...], file: Path) -> None:
    import wasmtime  # noqa: PLC0415

    try:
        func = exports[name]
    except KeyError:
        _fail(f"{file}: no export named {name!r}")
    if not isinstance(func, wasmtime.Func):
        _fail(f"{file}: export {name!r} is not a function")
    params = func.type(store).params
    if len(params) != len(args):
        _fail(f"{file}: {name} takes {len(params)} arguments, got {len(args)}")
    values: list[Any] = []
    for ty, raw in zip(params, args, strict=True):
        try:
            values.append(float(raw) if str(ty) in ("f32", "f64") else int(raw, 0))
        except ValueError:
            _fail(f"{file}: argument {raw!r} is not a valid {ty}")
    result = func(store, *values)
    if result is None:
        return
    for value in result if isinstance(result, list) else [result]:
        click.echo(value)


# --- compile ------------------------------------------------------------------------------------


@cli.command("compile")
@_engine_options
@cache_dir_option
@remote_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file.")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def compile_(
    wasm: tuple[str, ...], codegen: tuple[str, ...], optimize: tuple[str, ...], cache_dir: Path | None,
    remote: str | None, signing_key: str | None, trusted_keys: tuple[str, ...], as_json: bool,
    files: tuple[Path, ...],
) -> None:
    """Precompile FILES into the cache (from the remote tier if it has them); print each key and entry."""
    cache = _cache(cache_dir, _settings(wasm, codegen, optimize),
                   remote=remote_kwargs(remote, signing_key, trusted_keys))
    console = _err_console()
    for file in files:
        _require_file(file)
        kind = _kind_of(file)
        started = time.perf_counter()
        before = cache._compiles  # noqa: SLF001 - this object's counter, without a root scan
        with console.status(f"compiling {file} ...", spinner="dots"):
            if kind == "component":
                cache.load_component(file)
            else:
                cache.load(file)
        elapsed = time.perf_counter() - started
        key = cache.key_for(file, kind)  # type: ignore[arg-type]
        compiled = cache._compiles > before  # noqa: SLF001
        entry = cache.entry_path(key)
        if as_json:
            click.echo(json.dumps({"file": str(file), "kind": kind, "key": key, "entry": str(entry),
                                   "compiled": compiled, "seconds": round(elapsed, 3),
                                   "cached": entry.exists()}))
        else:
            state = "compiled" if compiled else "already cached"
            click.echo(f"{key}  {entry}")
            console.print(f"{file}: {state} in {elapsed:.2f} s", soft_wrap=True)


# --- management ---------------------------------------------------------------------------------


@cli.command()
@cache_dir_option
@remote_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats(cache_dir: Path | None, remote: str | None, signing_key: str | None, trusted_keys: tuple[str, ...],
          as_json: bool) -> None:
    """Entries, size and namespaces of the cache root (and the remote tier configured, if any)."""
    from ._layout import default_max_size  # noqa: PLC0415
    from ._maintenance import list_entries, scan_usage  # noqa: PLC0415

    root = _root(cache_dir)
    entries, size = scan_usage(root)
    listing = list_entries(root)
    namespaces: dict[str, dict[str, int]] = {}
    for info in listing:
        ns = namespaces.setdefault(info.namespace, {"entries": 0, "size_bytes": 0})
        ns["entries"] += 1
        ns["size_bytes"] += info.size
    max_size = default_max_size()
    data: dict[str, Any] = {"root": str(root), "entries": entries, "size_bytes": size, "max_size": max_size,
                            "namespaces": namespaces}
    from ._cache import _remote_settings  # noqa: PLC0415

    configured = _remote_settings(remote, signing_key, list(trusted_keys) or None)
    if configured is not None:
        url, key, trusted = configured
        data["remote"] = {"url": url, "signs_uploads": key is not None, "trusted_keys": trusted}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"cache root      {root}")
    click.echo(f"entries         {entries}")
    click.echo(f"size            {_human(size)} of {_human(max_size)}")
    if "remote" in data:
        r = data["remote"]
        click.echo(f"remote          {r['url']} ({len(r['trusted_keys'])} trusted key(s), "
                   f"{'signs and uploads' if r['signs_uploads'] else 'download only'})")
    click.echo(f"namespaces      {len(namespaces)}")
    for name, ns in sorted(namespaces.items()):
        click.echo(f"  {name}  {ns['entries']} entries, {_human(ns['size_bytes'])}")


@cli.command("ls")
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls_(cache_dir: Path | None, as_json: bool) -> None:
    """List entries, least recently used first."""
    from ._maintenance import list_entries  # noqa: PLC0415

    listing = list_entries(_root(cache_dir))
    if as_json:
        click.echo(json.dumps([_asdict(info) for info in listing], indent=2))
        return
    from rich.table import Table  # noqa: PLC0415

    table = Table(box=None)
    for column in ("key", "kind", "size", "last used", "wasmtime", "source"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for info in listing:
        table.add_row(info.key[:16], info.kind, _human(info.size),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(info.last_used)),
                      info.wasmtime_version, info.source)
    _console().print(table)


@cli.command()
@cache_dir_option
@click.option("--max-size", metavar="SIZE", help="Evict down to this size (512M, 2G); default: the configured limit.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def gc(cache_dir: Path | None, max_size: str | None, as_json: bool) -> None:
    """Evict least recently used entries; reap temp files of dead writers."""
    from ._cache import ModuleCache  # noqa: PLC0415

    report = ModuleCache(cache_dir).gc(max_size)
    if as_json:
        click.echo(json.dumps(_asdict(report)))
        return
    click.echo(f"evicted {report.evicted_entries} entries ({_human(report.freed_bytes)}), "
               f"reaped {report.reaped_temp_files} temp files; "
               f"{report.entries} entries, {_human(report.size_bytes)} remain")


@cli.command()
@cache_dir_option
@click.option("--fix", is_flag=True, help="Quarantine corrupt, mismatched and foreign files.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify(cache_dir: Path | None, fix: bool, as_json: bool) -> None:
    """Check every entry's content and engine against its record; exit 1 if any is bad."""
    from ._maintenance import verify_root  # noqa: PLC0415

    report = verify_root(_root(cache_dir), fix=fix)
    if as_json:
        click.echo(json.dumps({**_asdict(report), "ok": report.ok}, indent=2))
    else:
        for f in report.findings:
            click.echo(f"{f.problem}: {f.path}: {f.detail}; fix: {f.fix}")
        state = "ok" if report.ok else f"{len(report.findings)} problem(s)"
        fixed = f", {report.fixed} quarantined" if fix else ""
        click.echo(f"checked {report.checked} entries: {report.intact} intact, {state}{fixed}")
    if not report.ok:
        sys.exit(1)


@cli.command()
@cache_dir_option
def clear(cache_dir: Path | None) -> None:
    """Remove every entry of every namespace (running programs keep what they mapped)."""
    from ._maintenance import clear_root  # noqa: PLC0415

    root = _root(cache_dir)
    if not root.exists():
        click.echo(f"{root}: nothing to clear")
        return
    removed = clear_root(root)
    click.echo(f"removed {removed} entries from {root}")


@cli.command()
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.argument("target")
def inspect(cache_dir: Path | None, as_json: bool, target: str) -> None:
    """Decode a .cwasm file (ours or anyone's) or an entry KEY: engine, flags, kind, size, digest."""
    from ._inspect import inspect_target  # noqa: PLC0415

    info = inspect_target(target, _root(cache_dir))
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    for name in ("path", "kind", "size", "content_digest", "wasmtime_version", "target", "compiler",
                 "opt_level", "namespace", "key", "source", "wasm_digest"):
        if info.get(name) is not None:
            click.echo(f"{name.replace('_', ' '):18}{info[name]}")
    for group in ("tunables", "shared_flags", "isa_flags"):
        values = info.get(group) or {}
        if values:
            click.echo(f"{group.replace('_', ' ')}:")
            for k, v in values.items():
                click.echo(f"  {k} = {v}")


@cli.command()
@cache_dir_option
@click.option("--pid", type=int, help="Instead: check the .cwasm files mapped by this live process.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(cache_dir: Path | None, pid: int | None, as_json: bool) -> None:
    """Find dangers in the cache root (or in a live process's mapped modules), each with its fix."""
    from ._doctor import DANGER, diagnose_pid, diagnose_root  # noqa: PLC0415

    if pid is not None:
        try:
            mapped = diagnose_pid(pid)
        except OSError as exc:
            _fail(f"process {pid}: cannot read its memory map: {exc.strerror or exc}")
        danger = any(m.state == "modified-in-place" for m in mapped)
        if as_json:
            click.echo(json.dumps([_asdict(m) for m in mapped], indent=2))
        else:
            if not mapped:
                click.echo(f"process {pid} maps no .cwasm file")
            for m in mapped:
                click.echo(f"{m.state:18} {m.path}  ({m.detail})")
            if danger:
                click.echo("fix: restart the process; make the tool that rewrote the file publish by rename "
                           "(or use wasmcache)")
        sys.exit(1 if danger else 0)
    findings = diagnose_root(_root(cache_dir))
    danger = any(f.severity == DANGER for f in findings)
    if as_json:
        click.echo(json.dumps([_asdict(f) for f in findings], indent=2))
    else:
        for f in findings:
            click.echo(f"{f.severity}: {f.path}: {f.problem}\n  fix: {f.fix}")
        click.echo("no problems found" if not findings else f"{len(findings)} finding(s)")
    sys.exit(1 if danger else 0)


@cli.command("exec", context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
@cache_dir_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(cache_dir: Path | None, command: tuple[str, ...]) -> None:
    """Run COMMAND with the drop-in active in every Python process under it (children too)."""
    from ._dropin_exec import exec_command  # noqa: PLC0415

    exec_command(list(command), cache_dir=None if cache_dir is None else str(cache_dir))


_register_remote_commands(cli)


# --- entry point --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="wasmcache", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except (CacheError, _CliError) as exc:
        if debug:
            raise
        _err_console().print(f"[bold red]wasmcache: error:[/] {exc}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, ValueError) and "null byte" in str(exc):  # click's Path type stats before our checks
            _err_console().print("[bold red]wasmcache: error:[/] a path argument contains a NUL byte")
            sys.exit(2)
        _err_console().print(f"[bold red]wasmcache: internal error:[/] {type(exc).__name__}: {exc} "
                             "(run with --debug for a traceback)", soft_wrap=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
