"""`wasmcache exec CMD ...`: CMD with the drop-in active in every Python process under it.

`main()` takes the plain `exec ...` and `--cache-dir DIR exec ...` spellings before click is even
imported (a wrapped tool pays one exec, not the CLI's start-up); this command serves the rest
(`--help`, options in other places) the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ._group import cache_dir_option, cli

if TYPE_CHECKING:
    from pathlib import Path


@cli.command("exec", context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
@cache_dir_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_(ctx: click.Context, cache_dir: Path | None, command: tuple[str, ...]) -> None:
    """Run COMMAND with the drop-in active in every Python process under it (children too).

    With -v or --debug (before or after `exec`), every one of them prints what the drop-in does on stderr,
    as `wasmcache[PID]: ...`.
    """
    from .._dropin_exec import exec_command  # noqa: PLC0415

    options = ctx.obj or {}
    verbosity = 2 if options.get("debug") else 1 if options.get("verbose") else 0
    words = list(command)
    while words and words[0] in ("-v", "--verbose", "--debug"):
        verbosity, words = max(verbosity, 2 if words[0] == "--debug" else 1), words[1:]
    exec_command(words, cache_dir=None if cache_dir is None else str(cache_dir), verbosity=verbosity)
