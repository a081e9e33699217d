"""`wasmcache run`: listed in `wasmcache --help`, carried out by `wasmcache._run` (no click, no rich).

`wasmcache.cli.main` hands `run` straight to `wasmcache._run.main` before importing click at all
(the start-up of a hit is what `run` is measured by); this command is the same door for callers
that go through the click group.
"""

from __future__ import annotations

import click

from ._group import cli


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                               "allow_interspersed_args": False, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Run a WASI program or component through the cache, like `wasmtime run` (`run --help` for its flags)."""
    from .._run import main  # noqa: PLC0415

    obj = ctx.find_root().obj or {}
    cache_dir = obj.get("cache_dir")
    raise SystemExit(main(list(args), cache_dir=str(cache_dir) if cache_dir is not None else None,
                          debug=bool(obj.get("debug")), verbose=bool(obj.get("verbose"))))
