"""`wasmcache run`: `wasmtime run` through the cache, modules and WASI 0.2 components.

`main(argv)` takes the words after `run` and returns the exit code. It imports only what the run
needs: no click or rich (~35 ms), `wasmtime.component` only for a component, the S3 tier only
with a remote, the `--invoke` value code only with `--invoke`. Every error is one plain line on
stderr, `wasmcache: error: ...`, with wasmtime's real reason; `--debug` adds the whole chain and,
for wasmcache's own failures, the traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Final, NoReturn

from _wasmcache_hook import one_line

from ._outcome import USAGE_EXIT, RunError, say

_INTERNAL_EXIT: Final = 3
_INTERRUPTED_EXIT: Final = 130


def main(argv: list[str], *, cache_dir: str | None = None, debug: bool = False, verbose: bool = False) -> int:
    """Run `wasmcache run ARGV...`; return the process exit code (errors are printed here)."""
    _guard_standard_fds()
    if debug or verbose:
        import logging  # noqa: PLC0415 - already imported by wasmcache; configured only when asked

        # -v: wasmcache's own lines, not those of the libraries underneath (tuf, urllib3); --debug: all.
        logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(message)s")
        logging.getLogger("wasmcache").setLevel(logging.DEBUG if debug else logging.INFO)
    try:
        return _main(argv, cache_dir)
    except RunError as exc:
        say(one_line(f"wasmcache: error: {exc.message}"))
        if debug and exc.detail and exc.detail.strip() != exc.message:
            say(exc.detail.rstrip())
        return exc.code
    except KeyboardInterrupt:
        return _INTERRUPTED_EXIT
    except Exception as exc:
        from wasmcache import CacheError  # noqa: PLC0415

        if debug:
            import traceback  # noqa: PLC0415

            say(traceback.format_exc().rstrip())
        if isinstance(exc, CacheError):  # a setting, the cache root, the remote tier: one line, exit 2
            say(one_line(f"wasmcache: error: {exc}"))
            return USAGE_EXIT
        say(f"wasmcache: internal error: {type(exc).__name__}: {exc} (run with --debug for a traceback)")
        return _INTERNAL_EXIT


def run_and_exit(argv: list[str], *, cache_dir: str | None = None, debug: bool = False,
                 verbose: bool = False) -> NoReturn:
    """`main`, then end the process at once, as `wasmtime run` does (`process::exit`).

    Skipping the interpreter's teardown (module dicts, the wasmtime objects' destructors: the
    store, the instance, the module's mapping) saves ~10 ms per run (Yosys). Everything a run
    writes is written by then: cache entries synchronously, our messages with os.write.

    Ctrl-C kills the process as it kills `wasmtime run` (SIGINT's default action): Python's own
    handler only sets a flag, which nobody looks at while the guest runs inside one C call.
    """
    import signal  # noqa: PLC0415 - a built-in module

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    code = main(argv, cache_dir=cache_dir, debug=debug, verbose=verbose)
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _main(argv: list[str], cache_dir: str | None) -> int:
    from ._args import USAGE, parse  # noqa: PLC0415
    from ._outcome import RunUsageError  # noqa: PLC0415

    try:
        options = parse(argv)
    except RunUsageError as exc:
        raise RunError(str(exc), USAGE_EXIT) from None
    if options.help or options.file is None:
        os.write(1, USAGE.encode())
        return 0
    from ._load import load, open_cache, read_input  # noqa: PLC0415

    file = options.file
    kind, source = read_input(file)
    cache = open_cache(options, cache_dir)
    compiled = load(cache, kind, source, file)
    if kind == "component":
        from ._component import run_component  # noqa: PLC0415

        return run_component(cache.engine, compiled, options, file)
    from ._module import run_module  # noqa: PLC0415

    return run_module(cache, compiled, options, file)


def _guard_standard_fds() -> None:
    """Give a closed stdin/stdout/stderr /dev/null, as Rust's runtime does for `wasmtime run`.

    Otherwise the next file opened (a cache entry, the epoll fd of wasmtime's runtime) becomes
    fd 1, and the guest's "stdout" writes land in it; with /dev/null the guest's writes succeed
    and vanish, as they do under `wasmtime run f.wasm >&-`.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                null = os.open(os.devnull, os.O_RDWR)
            except OSError:
                return
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
