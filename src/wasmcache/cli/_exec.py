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
def exec_(cache_dir: Path | None, command: tuple[str, ...]) -> None:
    """Run COMMAND with the drop-in active in every Python process under it (children too)."""
    from .._dropin_exec import exec_command  # noqa: PLC0415

    exec_command(list(command), cache_dir=None if cache_dir is None else str(cache_dir))
