"""The `wasmcache` group and what its commands share: options, errors, output.

Errors are printed verbatim (never as markup: a file name like `build[debug]/x.wasm` is shown as
it is), as one line, `wasmcache: error: ...`, exit 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .._errors import CacheError
from .._version import __version__

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._cache import ModuleCache
    from .._engine import EngineSettings
    from .._stats import CacheStats


class CliError(CacheError):
    """A command-line error: printed as one line, exit code 2."""


def fail(message: str) -> NoReturn:
    raise CliError(message)


def shown(text: object) -> str:
    """`text` for a one-line error message (stderr): a non-UTF-8 byte shows as an escape, never crashes."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def say(text: object = "", *, err: bool = False) -> None:
    """Print one line: the real bytes of non-UTF-8 file names (Python holds them as surrogates)."""
    stream = sys.stderr if err else sys.stdout
    if stream is None:
        if err:
            return
        raise CliError("standard output is closed: nothing can be printed (run without >&-)")
    import _wasmcache_hook  # noqa: PLC0415 - the one rule for printing a name's bytes

    line = _wasmcache_hook.line_bytes(f"{text}\n")
    buffer = getattr(stream, "buffer", None)
    if buffer is None:  # a text-only stream (an embedding caller's): escapes instead of bytes
        stream.write(line.decode("utf-8", "backslashreplace"))
        return
    stream.flush()  # whatever went through the text layer first stays first
    buffer.write(line)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def count(n: int, one: str, many: str) -> str:
    """`1 entry`, `3 entries`: a count with its noun."""
    return f"{n} {one if n == 1 else many}"


def asdict(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict as dataclass_asdict  # noqa: PLC0415 - 5 ms to import; only --json needs it

    result: dict[str, Any] = dataclass_asdict(obj)
    return result


# --- shared options -----------------------------------------------------------------------------


def _cache_dir_or_group(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    # `wasmcache --cache-dir X stats` and `wasmcache stats --cache-dir X`; given twice, the subcommand's wins.
    if value is not None:
        return value
    root_obj = ctx.find_root().obj or {}
    found: Path | None = root_obj.get("cache_dir")
    return found


_CACHE_DIR_HELP = "Cache root (default: $WASMCACHE_DIR, else the platform user cache directory)."


class _RootPath(click.Path):
    """click's Path, refusing an empty value: `--cache-dir=` (an unset variable in a script) would
    otherwise make the current directory the cache root."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value in ("", b""):
            self.fail("an empty path (an unset variable?)", param, ctx)
        return super().convert(value, param, ctx)


_CACHE_DIR_TYPE = _RootPath(path_type=Path, readable=False)  # an unreadable root: each command says it in one line


def cache_dir_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--cache-dir", type=_CACHE_DIR_TYPE, default=None, callback=_cache_dir_or_group,
                        expose_value=True, help=_CACHE_DIR_HELP)(f)


def engine_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("-O", "optimize", multiple=True, metavar="opt-level=0|1|2|s",
                     help="Optimization options, as in `wasmtime run -O`.")(f)
    f = click.option("-C", "codegen", multiple=True, metavar="compiler=cranelift|winch",
                     help="Code generation options, as in `wasmtime run -C`.")(f)
    return click.option("-W", "wasm", multiple=True, metavar="FEATURE=y|n",
                        help="Wasm features and fuel/epoch options, as in `wasmtime run -W`.")(f)


def remote_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--remote``, ``--signing-key`` and ``--trusted-key`` (default: $WASMCACHE_REMOTE & co.)."""
    f = click.option("--trusted-key", "trusted_keys", multiple=True, metavar="PUB.pem",
                     help="Accept artifacts signed by this public key (repeatable; default: "
                          "$WASMCACHE_TRUSTED_KEYS).")(f)
    f = click.option("--signing-key", metavar="KEY.pem", default=None,
                     help="Sign and upload what this host compiles (default: $WASMCACHE_SIGNING_KEY).")(f)
    return click.option("--remote", metavar="s3://BUCKET[/PREFIX]", default=None,
                        help="Shared remote tier (default: $WASMCACHE_REMOTE).")(f)


def substituter_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--substituter`` and ``--substituter-root`` (default: $WASMCACHE_SUBSTITUTERS & co.)."""
    f = click.option("--substituter-root", "substituter_roots", multiple=True, metavar="root.json",
                     help="Trust precompiled modules signed under this publisher's root (repeatable; default: "
                          "$WASMCACHE_SUBSTITUTER_ROOTS).")(f)
    return click.option("--substituter", "substituters", multiple=True, metavar="URL",
                        help="Ask this static host for a publisher's precompiled module before compiling "
                             "(repeatable, in priority order; default: $WASMCACHE_SUBSTITUTERS).")(f)


def remote_kwargs(remote: str | None, signing_key: str | None, trusted_keys: tuple[str, ...],
                  substituters: tuple[str, ...] = (), substituter_roots: tuple[str, ...] = ()) -> dict[str, Any]:
    """ModuleCache keyword arguments for the options of `remote_options` and `substituter_options` (None
    = the environment's)."""
    from .._remote._settings import remote_arguments  # noqa: PLC0415

    return remote_arguments(remote, signing_key, trusted_keys, substituters, substituter_roots)


def settings_of(wasm: tuple[str, ...], codegen: tuple[str, ...], optimize: tuple[str, ...]) -> EngineSettings | None:
    from .._engine import EngineSettings  # noqa: PLC0415

    return EngineSettings.from_command_line(wasm, codegen, optimize)


def open_cache(cache_dir: Path | None, settings: EngineSettings | None = None, *, memory: bool = False,
               remote: dict[str, Any] | None = None) -> ModuleCache:
    from .._cache import ModuleCache  # noqa: PLC0415

    return ModuleCache(cache_dir, engine=settings, mode="memory" if memory else "mmap", **(remote or {}))


def root_of(cache_dir: Path | None) -> Path:
    """The absolute root the commands work on (the library's one resolution rule)."""
    from .._core import resolve_root  # noqa: PLC0415

    return resolve_root(cache_dir)


def input_kind(path: Path) -> str:
    """module | component | text (WAT, or anything else wat2wasm may read), from the file's first bytes; a
    one-line error for what is not a wasm input."""
    import os  # noqa: PLC0415
    import stat  # noqa: PLC0415

    name = shown(path)
    try:
        # O_NONBLOCK: a FIFO given as input is refused below, not waited on forever.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        fail(f"{name}: cannot read: {exc.strerror or exc}")
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            fail(f"{name}: a directory, expected a .wasm file")
        if not stat.S_ISREG(st.st_mode):
            fail(f"{name}: not a regular file, expected a .wasm file")
        head = os.read(fd, 8)
    except OSError as exc:
        fail(f"{name}: cannot read: {exc.strerror or exc}")
    finally:
        os.close(fd)
    if not head:
        fail(f"{name}: empty file, expected a .wasm module or component")
    if head[:4] == b"\0asm":
        from .._core import wasm_kind  # noqa: PLC0415

        return wasm_kind(head)
    if head[:4] == b"\x7fELF":
        fail(f"{name}: a precompiled .cwasm, not wasm; `wasmcache inspect` describes it")
    return "text"


def wasm_input(file: Path) -> tuple[str, Path | bytes]:
    """(kind, what to load) for `file`: by its path, WAT text too, as `run`, a library load and the drop-in key
    it (a hit never reads it), so `compile x.wat` warms all of them (one entry); the text's kind (module or
    component) is read here, and bad WAT is one line. Stdin or a pipe (no path to key): its bytes."""
    kind = input_kind(file)
    if kind != "text":
        return kind, file
    from .._errors import CompileError  # noqa: PLC0415
    from .._run._load import read_input  # noqa: PLC0415
    from .._run._outcome import RunError  # noqa: PLC0415

    try:
        kind, data = read_input(str(file))
    except RunError as exc:
        raise CompileError(shown(file), str(exc).removeprefix(f"{file}: ")) from None
    return kind, data if isinstance(data, bytes) else file


def load_counted(cache: ModuleCache, file: Path) -> tuple[str, Path | bytes, CacheStats, CacheStats, float]:
    """Load `file` as what its header says it is: (kind, what was loaded, stats before, stats after, seconds)."""
    import time  # noqa: PLC0415

    kind, source = wasm_input(file)
    before = cache.stats()
    started = time.perf_counter()
    if kind == "component":
        cache.load_component(source)
    else:
        cache.load(source)
    return kind, source, before, cache.stats(), time.perf_counter() - started


# --- the group ----------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wasmcache")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@click.option("-v", "--verbose", is_flag=True, help="Log what the cache does (hits, compiles, repairs).")
@click.option("--cache-dir", type=_CACHE_DIR_TYPE, default=None, help=_CACHE_DIR_HELP)
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool, cache_dir: Path | None) -> None:
    """A crash-safe cache of precompiled WebAssembly modules for Wasmtime."""
    ctx.obj = {"debug": debug, "verbose": verbose, "cache_dir": cache_dir}
    configure_logging(debug=debug, verbose=verbose)


def configure_logging(*, debug: bool, verbose: bool) -> None:
    """`-v`: wasmcache's own info lines (not those of tuf, urllib3 ... underneath); `--debug`: everything."""
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level if debug else logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("wasmcache").setLevel(level)
