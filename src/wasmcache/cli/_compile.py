"""`wasmcache compile`: precompile files into the cache, going on past a bad one."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from _wasmcache_hook import one_line

from .._core import has_marker, lock_path
from .._errors import CacheError
from .._lock import holder
from ._group import (
    cache_dir_option,
    cli,
    engine_options,
    human,
    load_counted,
    open_cache,
    remote_kwargs,
    remote_options,
    say,
    substituter_options,
)
from ._group import settings_of as _settings_of

if TYPE_CHECKING:
    from .._cache import ModuleCache


@cli.command("compile")
@engine_options
@cache_dir_option
@remote_options
@substituter_options
@click.option("--native", is_flag=True, help="Compile here, replacing entries a substituter or the remote "
              "filled (for the last few percent of a CPU's own features); never asks either.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file.")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def compile_(
    wasm: tuple[str, ...], codegen: tuple[str, ...], optimize: tuple[str, ...], cache_dir: Path | None,
    remote: str | None, signing_key: str | None, trusted_keys: tuple[str, ...], substituters: tuple[str, ...],
    substituter_roots: tuple[str, ...], native: bool, as_json: bool, files: tuple[Path, ...],
) -> None:
    """Precompile FILES into the cache (from the remote tier or a substituter if one has them); print each key
    and entry.

    Goes on past a file that cannot be compiled, reports each, and exits 1 if any failed.
    """
    arguments = remote_kwargs(remote, signing_key, trusted_keys, substituters, substituter_roots)
    if native:
        arguments.update(remote=False, substituters=[])
    cache = open_cache(cache_dir, _settings_of(wasm, codegen, optimize), remote=arguments)
    cache.engine  # noqa: B018 - settings wasmtime rejects: one line, exit 2, before any file
    failed = 0
    for file in files:
        try:
            kind, source, before, after, elapsed = load_counted(cache, file)
            key = cache.key_for(source, "component" if kind == "component" else "module")
            info = cache.entry_info(key) if native else None
            if info is not None and info.origin in ("substituted", "remote"):
                started = time.perf_counter()
                cache.recompile(source, "component" if kind == "component" else "module")
                elapsed, after = time.perf_counter() - started, cache.stats()
        except CacheError as exc:
            failed += 1
            if as_json:
                say(json.dumps({"file": str(file), "error": str(exc)}))
            else:
                say(one_line(f"wasmcache: error: {exc}"), err=True)
            continue
        entry = cache.entry_path(key)
        # exists: False, not OSError, for a path too long; never through a namespace that is a link (never used)
        cached = not cache.disabled and not os.path.islink(entry.parent) and os.path.exists(entry)
        substituted = after.substituted > before.substituted
        if after.remote_hits > before.remote_hits:
            state = "from the remote tier"
        elif substituted:
            entry_info = cache.entry_info(key)
            level = entry_info.level if entry_info is not None else None
            state = f"precompiled by its publisher ({level}), from {entry_info.substituter}" if entry_info and level \
                else "precompiled by its publisher"
        elif after.compiles > before.compiles:
            state = "compiled"
        else:
            state = "already cached"
        if not cached:
            done = "compiled" if after.compiles > before.compiles else "loaded"
            state = f"{done}, not cached ({_why_not_cached(cache, entry, key)})"
        if as_json:
            say(json.dumps({"file": str(file), "kind": kind, "key": key, "entry": str(entry) if cached else None,
                            "compiled": after.compiles > before.compiles, "substituted": substituted,
                            "seconds": round(elapsed, 3),
                            "cached": cached}))
        else:
            say(f"{key}  {entry if cached else '-'}")
            say(f"{file}: {state} in {elapsed:.2f} s", err=True)
    if failed:
        raise SystemExit(1)


def _why_not_cached(cache: ModuleCache, entry: Path, key: str) -> str:
    if cache.disabled:
        return "WASMCACHE_DISABLE is set"
    if not cache.writable:
        return f"{cache.root} is not writable" if has_marker(cache.root) else \
            f"{cache.root} could not be set up: {cache._ctx.setup_failure or 'see the warning above'}"  # noqa: SLF001
    failed = cache._why_not_stored(key)  # noqa: SLF001 - the CLI's own package
    if failed is not None:
        return failed
    pid = holder(lock_path(entry.parent, key))
    if pid is not None:
        return f"process {pid} holds its key: see the warning above"
    return f"evicted at once: the size limit is {human(cache.max_size)} ($WASMCACHE_MAX_SIZE, gc --max-size)"
