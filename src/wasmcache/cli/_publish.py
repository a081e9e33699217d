"""`wasmcache publish`: compile wasm at CPU levels and sign a static TUF tree for users (see _public/_publish)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ._group import cli, engine_options, say, settings_of


@cli.command()
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="The tree to create or add to (serve it as-is from any static host).")
@click.option("--signing-key", metavar="KEY.pem", default=None,
              help="Signs targets, snapshot and timestamp (and root, unless --root-key): `wasmcache keygen`.")
@click.option("--unsigned", is_flag=True, help="Write an unsigned part (a CI matrix job); sign later with --merge.")
@click.option("--merge", "merge", multiple=True, type=click.Path(path_type=Path), metavar="PART",
              help="Add the artifacts of an unsigned part (repeatable). The signature vouches for whatever the "
                   "part holds: build parts only on runners you trust as much as the key.")
@click.option("--root-key", metavar="ROOT.pem", default=None,
              help="A separate (offline) key for the root role: at creation, rotation and root renewal.")
@click.option("--rotate-to", metavar="NEW.pem", default=None,
              help="Replace the signing key by NEW in a new root signed by both (old consumers follow).")
@click.option("--revoke", "revoke", multiple=True, metavar="FIELD=VALUE[,...]",
              help="Remove matching artifacts from the metadata, e.g. wasmtime=50.0.0 (repeatable).")
@click.option("--level", "level", default=None, metavar="LEVEL[,LEVEL]",
              help="CPU levels (x86-64-v4,x86-64-v3,x86-64-v2,baseline; default: every one this runner can).")
@click.option("--expires-days", type=click.IntRange(1, 3650), default=30, show_default=True,
              help="Validity of targets, snapshot and timestamp: re-run publish before then.")
@engine_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per artifact and a summary.")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
def publish(out: Path, signing_key: str | None, unsigned: bool, merge: tuple[Path, ...], root_key: str | None,
            rotate_to: str | None, revoke: tuple[str, ...], level: str | None, expires_days: int,
            wasm: tuple[str, ...], codegen: tuple[str, ...], optimize: tuple[str, ...], as_json: bool,
            files: tuple[Path, ...]) -> None:
    """Compile FILES for every CPU level and publish them, signed, into the static tree --out."""
    from .._public._build import compile_at_levels  # noqa: PLC0415
    from .._public._publish import PublishError, check_before_compiling, check_inputs, rebuilds  # noqa: PLC0415
    from .._public._publish import publish as publish_tree  # noqa: PLC0415

    if unsigned == (signing_key is not None):
        raise PublishError("pass --signing-key KEY.pem (sign now) or --unsigned (a part to --merge later)")
    settings = settings_of(wasm, codegen, optimize)
    levels = [name.strip() for name in level.split(",") if name.strip()] if level is not None else None
    if levels == []:
        raise PublishError("--level: name at least one level (x86-64-v4, x86-64-v3, x86-64-v2, baseline)")
    for file in files:
        text = os.fsencode(file).decode("utf-8", "replace")
        if "\ufffd" in text or not text.isprintable():
            raise PublishError(f"{os.fsdecode(file).encode('utf-8', 'backslashreplace').decode()}: a file name "
                               "that is not UTF-8 text cannot be named in the signed metadata; rename it")
    check_inputs(files)
    check_before_compiling(out, signing_key=signing_key, root_key=root_key, rotate_to=rotate_to, revoke=revoke,
                           builds=rebuilds(files, settings, levels) if revoke else ())
    built = []
    for file in files:
        items = compile_at_levels(str(file), settings, levels)
        built += items
        for item in items:
            c = item.custom
            if as_json:
                say(json.dumps({"file": str(file), "target": item.path, "level": c["level"], "size": c["size"],
                                "compressed_size": c["compressed_size"], "wasmtime": c["wasmtime"]}))
            else:
                say(f"{file}: {c['level']:10} {c['size']:>11,} bytes, {c['compressed_size']:>11,} compressed")
    result = publish_tree(out, built, signing_key=signing_key, root_key=root_key, merge=[str(p) for p in merge],
                          revoke=revoke, rotate_to=rotate_to, days=expires_days)
    for path in result.revoked:
        say(f"revoked {path}")
    summary = (f"{out}: {result.added} artifact(s) added, {result.kept} already published"
               + (f", {result.refused} refused (the content of a revoked artifact)" if result.refused else "")
               + (f", {len(result.revoked)} revoked" if result.revoked else "")
               + (f", targets v{result.version}" if result.version else " (unsigned part)"))
    if as_json:
        say(json.dumps({"out": str(out), "added": result.added, "kept": result.kept, "refused": result.refused,
                        "revoked": list(result.revoked), "targets_version": result.version}))
    else:
        say(summary, err=True)
