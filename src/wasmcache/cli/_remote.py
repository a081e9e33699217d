"""`wasmcache keygen | push | pull`: the shared remote tier from the command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .._errors import CacheError
from .._remote._settings import RemoteSettings, resolve_remote_settings
from ._group import (
    cache_dir_option,
    cli,
    engine_options,
    load_counted,
    remote_kwargs,
    remote_options,
    root_of,
    say,
    settings_of,
    substituter_options,
    wasm_input,
)

if TYPE_CHECKING:
    from .._core import Namespace
    from .._remote import PutResult, RemoteTier

PRIVATE_NAME = "wasmcache-signing.pem"
PUBLIC_NAME = "wasmcache-signing.pub"



class RemoteCommandError(CacheError):
    """A remote-tier command cannot do what was asked (printed as one line, exit 2)."""


# --- keygen ---------------------------------------------------------------------------------------------


def write_keypair(out: Path) -> tuple[Path, Path, str]:
    """Create an Ed25519 key pair in `out`: (private PEM 0600, public PEM 0644, key id). Never overwrites."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415

    from .._remote._keys import key_id  # noqa: PLC0415

    if os.path.lexists(out) and not out.is_dir():
        raise RemoteCommandError(f"--out {out}: exists and is not a directory")
    private_path, public_path = out / PRIVATE_NAME, out / PUBLIC_NAME
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise RemoteCommandError(f"{path} already exists; refusing to overwrite a key (move it away first)")
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise RemoteCommandError(f"--out {out}: cannot create the directory: {exc.strerror or exc}") from None
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    written: list[Path] = []
    try:
        for path, data, mode in ((private_path, private_pem, 0o600), (public_path, public_pem, 0o644)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
            written.append(path)
            try:
                os.fchmod(fd, mode)  # whatever the umask says
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
    except FileExistsError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        raise RemoteCommandError(f"{exc.filename} already exists; refusing to overwrite a key") from None
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        raise RemoteCommandError(f"cannot write a key in {out}: {exc.strerror or exc}") from None
    return private_path, public_path, key_id(private.public_key())


# --- push -----------------------------------------------------------------------------------------------


def push_entry(remote: RemoteTier, namespace: Namespace, key: str) -> tuple[PutResult | str, str]:
    """Upload one local entry after checking it in full against its record and namespace: (outcome, detail).

    Signing is an attestation, so nothing is signed that the local cache would not load itself:
    the same check as `verify` (`Namespace.check`), on the very bytes that are uploaded.
    """
    from .._core import UntrustedEntryError, fingerprint_of_section, namespace_name  # noqa: PLC0415

    section = namespace.read_section()
    if section is None:
        return "skipped", "namespace has no engine file"
    fingerprint = fingerprint_of_section(section)
    if namespace_name(fingerprint) != namespace.name:
        return "skipped", "namespace engine file does not match the namespace name"
    try:
        checked = namespace.check(key, kind=None, section=section, full=True, keep_data=True)
    except UntrustedEntryError as problem:
        return "skipped", f"{problem} (run `wasmcache verify --fix`)"
    if checked is None or checked.data is None:
        return "skipped", "no entry (run `wasmcache verify`)"
    checked.close()
    data = checked.data
    outcome = remote.put(key, fingerprint, data)
    detail = {"uploaded": f"{len(data)} bytes", "exists": "already on the remote",
              "failed": "upload failed (see the warning above)"}[outcome]
    return outcome, detail


def _remote_tier(settings: RemoteSettings | None) -> RemoteTier:
    if settings is None:
        raise RemoteCommandError("no remote: pass --remote s3://BUCKET[/PREFIX] or set $WASMCACHE_REMOTE")
    if settings.signing_key is None:
        raise RemoteCommandError("push needs a signing key (it signs what it uploads): pass --signing-key "
                                 "KEY.pem or set $WASMCACHE_SIGNING_KEY (create one with `wasmcache keygen`)")
    from .._remote import RemoteTier  # noqa: PLC0415

    return RemoteTier.from_settings(settings)


# --- the commands ---------------------------------------------------------------------------------------


@cli.command()
@click.option("--out", "out", required=True, type=str,
              help="Directory for wasmcache-signing.pem (private, 0600) and wasmcache-signing.pub.")
def keygen(out: str) -> None:
    """Create an Ed25519 signing key pair: for the remote tier (push/pull) and for `wasmcache publish`."""
    if not out.strip():
        raise RemoteCommandError("--out: empty; name the directory for the key pair")
    if sys.stdout is None:  # say() would fail after the keys exist, and a second run refuses to overwrite them
        raise RemoteCommandError("standard output is closed: nothing can be printed (run without >&-)")
    private_path, public_path, kid = write_keypair(Path(out))
    say(f"private key  {private_path}  (keep it secret: CI/publishers only)")
    say(f"public key   {public_path}  (for the remote tier: --trusted-key / $WASMCACHE_TRUSTED_KEYS; "
        "for publish: the tree's root.json is what consumers trust)")
    say(f"key id       {kid}")

@cli.command()
@click.option("--all", "push_all", is_flag=True, help="Upload every entry of the local cache root.")
@engine_options
@cache_dir_option
@remote_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per entry.")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
def push(push_all: bool, wasm: tuple[str, ...], codegen: tuple[str, ...], optimize: tuple[str, ...],
         cache_dir: Path | None, remote: str | None, signing_key: str | None, trusted_keys: tuple[str, ...],
         as_json: bool, files: tuple[Path, ...]) -> None:
    """Sign and upload local entries: every one (--all) or those of FILES (compiled first if needed)."""
    if push_all == bool(files):
        raise RemoteCommandError("name the FILES to push, or pass --all (not both)")
    from .._core import Namespace  # noqa: PLC0415

    tier = _remote_tier(resolve_remote_settings(remote, signing_key, trusted_keys, require_trusted=False))
    results: list[tuple[str, str, str, str]] = []  # (what, key, outcome, detail)
    if push_all:
        from .._maintenance import list_entries  # noqa: PLC0415

        root = root_of(cache_dir)
        for info in list_entries(root):
            outcome, detail = push_entry(tier, Namespace(root, root / info.namespace), info.key)
            results.append((info.source, info.key, outcome, detail))
            _report(results[-1], as_json=as_json)
    else:
        from .._cache import ModuleCache  # noqa: PLC0415

        # Compile or load locally only, whatever $WASMCACHE_REMOTE says: push_entry below checks
        # the entry and uploads it.
        cache = ModuleCache(cache_dir, engine=settings_of(wasm, codegen, optimize),
                            remote=False)
        for file in files:
            kind, source = wasm_input(file)
            if kind == "component":
                cache.load_component(source)
            else:
                cache.load(source)
            key = cache.key_for(source, kind)  # type: ignore[arg-type]
            outcome, detail = push_entry(tier, Namespace(cache.root, cache.namespace_dir), key)
            results.append((str(file), key, outcome, detail))
            _report(results[-1], as_json=as_json)
    counts = {o: sum(1 for r in results if r[2] == o) for o in ("uploaded", "exists", "failed", "skipped")}
    if not as_json:
        say(f"{counts['uploaded']} uploaded, {counts['exists']} already on the remote, "
                   f"{counts['failed']} failed, {counts['skipped']} skipped ({tier.url})", err=True)
    if counts["failed"] or counts["skipped"]:
        raise SystemExit(1)

@cli.command()
@engine_options
@cache_dir_option
@remote_options
@substituter_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file.")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def pull(wasm: tuple[str, ...], codegen: tuple[str, ...], optimize: tuple[str, ...], cache_dir: Path | None,
         remote: str | None, signing_key: str | None, trusted_keys: tuple[str, ...], substituters: tuple[str, ...],
         substituter_roots: tuple[str, ...], as_json: bool, files: tuple[Path, ...]) -> None:
    """Warm this host's cache for FILES from the remote or a substituter (compiling what neither has).

    Exits 1 if an artifact was rejected (bad or untrusted signature): the file was compiled
    locally, but someone may be tampering with the bucket.
    """
    from .._cache import ModuleCache  # noqa: PLC0415

    settings = resolve_remote_settings(remote, signing_key, trusted_keys, require_trusted=False)
    substituting = bool(substituters) or bool(os.environ.get("WASMCACHE_SUBSTITUTERS", "").split())
    if settings is None and not substituting:
        raise RemoteCommandError("nothing to pull from: pass --remote s3://BUCKET[/PREFIX] (or set "
                                 "$WASMCACHE_REMOTE), or --substituter URL (or set $WASMCACHE_SUBSTITUTERS)")
    if settings is not None and not settings.trusted_keys:
        raise RemoteCommandError("pull loads only artifacts signed by a key you trust: pass --trusted-key "
                                 "PUB.pem or set $WASMCACHE_TRUSTED_KEYS")
    cache = ModuleCache(cache_dir, engine=settings_of(wasm, codegen, optimize),
                        **remote_kwargs(settings.url if settings else False,  # type: ignore[arg-type]
                                        settings.signing_key if settings else None,
                                        settings.trusted_keys if settings else (), substituters, substituter_roots))
    if cache.disabled or not cache.writable:
        why = "$WASMCACHE_DISABLE is set" if cache.disabled else "not a writable cache root"
        raise RemoteCommandError(f"{cache.root}: {why}; nothing to warm")
    rejected = 0
    for file in files:
        kind, source, before, after, elapsed = load_counted(cache, file)
        if after.remote_hits > before.remote_hits:
            outcome = "remote hit"
        elif after.substituted > before.substituted:
            outcome = "substituted"
        elif after.compiles > before.compiles:
            outcome = "compiled and uploaded" if after.uploads > before.uploads else "compiled"
        else:
            outcome = "already cached"
        rejected += after.rejected - before.rejected
        if as_json:
            say(json.dumps({"file": str(file), "key": cache.key_for(source, kind),  # type: ignore[arg-type]
                                   "outcome": outcome, "rejected": after.rejected - before.rejected,
                                   "seconds": round(elapsed, 3)}))
        else:
            say(f"{file}: {outcome} in {elapsed:.2f} s")
    if rejected:
        say(f"wasmcache: {rejected} artifact(s) rejected (see the warnings): compiled locally instead; check who "
            "can write to the bucket or the substituter's tree", err=True)
        raise SystemExit(1)


def _report(result: tuple[str, str, str, str], *, as_json: bool) -> None:
    what, key, outcome, detail = result
    if as_json:
        say(json.dumps({"source": what, "key": key, "outcome": outcome, "detail": detail}))
    else:
        say(f"{key[:16]}  {outcome:9} {what}  ({detail})")
