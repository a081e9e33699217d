"""The `wasmcache` command: `run` and `compile` like `wasmtime`, cache management like ccache.

Only this package imports click (and each command imports what it needs), so `import wasmcache`
in a library stays light. Modules: `_group` (the group, shared options, output), `_run`,
`_compile`, `_manage` (stats, ls, gc, verify, clear, inspect, doctor), `_remote` (keygen, push, pull).
"""

from __future__ import annotations

import errno
import os
import sys
from typing import NoReturn


def main(argv: list[str] | None = None) -> None:
    """The console script: every error is one line (exit 2), a traceback only with --debug."""
    args = sys.argv[1:] if argv is None else argv
    _exec_fast_path(args)
    from .._core import show_progress_on_terminal  # noqa: PLC0415 - light: loaded with the package

    show_progress_on_terminal()
    debug = "--debug" in args
    run = _run_arguments(args)
    if run is not None:  # the start-up of a hit is what `run` is measured by: no click for it
        from .._run import main as run_main  # noqa: PLC0415
        from .._run import run_and_exit  # noqa: PLC0415

        if argv is None:  # the process's entry point: end it at once, as `wasmtime run` does
            run_and_exit(run[0], cache_dir=run[1], debug=debug, verbose=run[2])
        sys.exit(run_main(run[0], cache_dir=run[1], debug=debug, verbose=run[2]))
    try:
        _dispatch(args)
    except BrokenPipeError:
        # `wasmcache ls | head`: the reader went away; say nothing more, as cat does.
        with _suppress_os_error():
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        _exit_for(exc)


def _exit_for(exc: Exception) -> NoReturn:
    """One line for an error, and the exit status: 2 ours or a named file, 1 the output, 3 a bug."""
    from .._errors import CacheError  # noqa: PLC0415

    if isinstance(exc, CacheError):
        _error_line(str(exc))
        sys.exit(2)
    if isinstance(exc, OSError) and exc.filename is not None:  # e.g. a root under another user's home
        _error_line(f"{os.fsdecode(exc.filename)}: {exc.strerror or exc}")
        sys.exit(2)
    if isinstance(exc, OSError) and exc.errno in _OUTPUT_ERRORS:  # `wasmcache ls > /dev/full`, a full disk
        _error_line(f"cannot write the output: {exc.strerror or exc}")
        with _suppress_os_error():  # the buffered rest would fail again at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    if isinstance(exc, ValueError) and "null byte" in str(exc):  # click's Path type stats before our checks
        _error_line("a path argument contains a NUL byte")
        sys.exit(2)
    _error_line(f"internal error: {type(exc).__name__}: {exc} (run with --debug for a traceback)")
    sys.exit(3)


_OUTPUT_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)  # a write without a file name: stdout's


def _leading_options(args: list[str]) -> tuple[int, str | None, list[str]] | None:
    """The group's options before the subcommand, read without click: (verbosity: 1 for -v, 2 for --debug,
    --cache-dir or None, the words from the subcommand on); None when click must judge a word."""
    cache_dir = None
    verbosity = 0
    while args:
        word = args[0]
        if word in ("-v", "--verbose"):
            verbosity, args = max(verbosity, 1), args[1:]
        elif word == "--debug":
            verbosity, args = 2, args[1:]
        elif word == "--cache-dir" and len(args) > 1:
            cache_dir, args = args[1], args[2:]
        elif word.startswith("--cache-dir="):
            cache_dir, args = word.partition("=")[2], args[1:]
        else:
            return verbosity, cache_dir, args
    return None


def _run_arguments(args: list[str]) -> tuple[list[str], str | None, bool] | None:
    """(words after `run`, a --cache-dir given before it, -v) when the command is `run`, else None."""
    leading = _leading_options(args)
    if leading is None or leading[2][:1] != ["run"]:
        return None
    verbosity, cache_dir, rest = leading
    return rest[1:], cache_dir, verbosity >= 1  # with --debug, run logs at debug level anyway


def _dispatch(args: list[str]) -> None:
    import click  # noqa: PLC0415

    from . import _compile, _exec, _manage, _publish, _remote, _run  # noqa: F401, PLC0415 - they register their commands
    from ._group import cli  # noqa: PLC0415

    try:
        cli.main(args=args, prog_name="wasmcache", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)


def _exec_fast_path(args: list[str]) -> None:
    """`[-v|--debug] [--cache-dir DIR] exec [--cache-dir DIR] [--] CMD ...` becomes CMD without importing click.

    A wrapped tool pays one exec, not the CLI's start-up (~30 ms of click). `exec --help` and a
    missing CMD go on to click, which prints the usual help and usage errors.
    """
    leading = _leading_options(args)
    if leading is None or leading[2][:1] != ["exec"] or leading[1] == "":
        return
    verbosity, cache_dir, args = leading
    from .._dropin_exec import exec_command, parse_exec_args  # noqa: PLC0415

    parsed = parse_exec_args(args[1:])
    if parsed is None:
        return
    own_cache_dir, command, own_verbosity = parsed
    exec_command(command, cache_dir=own_cache_dir if own_cache_dir is not None else cache_dir,
                 verbosity=max(verbosity, own_verbosity))


def _error_line(message: str) -> None:
    import _wasmcache_hook  # noqa: PLC0415 - the one rule for a line naming a file

    text = _wasmcache_hook.one_line(f"wasmcache: error: {message}")
    stream = sys.stderr
    if stream is None:
        return
    with _suppress_os_error():
        stream.write(text.encode("utf-8", "backslashreplace").decode("utf-8") + "\n")
        stream.flush()


class _suppress_os_error:  # noqa: N801 - used like contextlib.suppress, without importing contextlib
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, (OSError, ValueError))


if __name__ == "__main__":
    main()
