"""The remote tier's settings: one resolver for the library, `run`/`compile`/`stats`, `push` and `pull`.

Arguments win; what is not given comes from `$WASMCACHE_REMOTE`, `$WASMCACHE_SIGNING_KEY` and
`$WASMCACHE_TRUSTED_KEYS` (`os.pathsep`-separated). Key files are checked to exist here, when the
cache is made, not at the first miss. Light: no botocore, no cryptography.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from .._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

_BUCKET_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
URL_FORM: Final = "s3://BUCKET[/PREFIX]"


class RemoteSettings(NamedTuple):
    url: str
    signing_key: str | None
    trusted_keys: tuple[str, ...]


def remote_arguments(remote: str | None, signing_key: str | None, trusted_keys: Sequence[str],
                     substituters: Sequence[str] = (), substituter_roots: Sequence[str] = ()) -> dict[str, Any]:
    """`ModuleCache` keyword arguments for a command's remote and substituter options (None/empty: the
    environment's)."""
    return {"remote": remote, "signing_key": signing_key, "trusted_keys": list(trusted_keys) or None,
            "substituters": list(substituters) or None, "substituter_roots": list(substituter_roots) or None}


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix without surrounding slashes) of ``s3://BUCKET[/PREFIX]``."""
    if not url.startswith("s3://"):
        raise ConfigError(f"remote {url!r}: expected {URL_FORM}")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not _BUCKET_RE.match(bucket):
        raise ConfigError(f"remote {url!r}: {bucket!r} is not a valid bucket name")
    prefix = prefix.strip("/")
    if any(c in prefix for c in "\0\r\n") or "//" in prefix:
        raise ConfigError(f"remote {url!r}: invalid prefix {prefix!r}")
    return bucket, prefix


def _key_file(path: str, role: str) -> str:
    if "\0" in path:
        raise ConfigError(f"{role} {path!r}: a path cannot contain a NUL byte")
    if not os.path.isfile(path):
        what = "is a directory, expected a PEM key file" if os.path.isdir(path) else "no such file"
        raise ConfigError(f"{role} {path}: {what}")
    return path


def resolve_remote_settings(
    remote: str | Literal[False] | None,
    signing_key: str | os.PathLike[str] | None = None,
    trusted_keys: Sequence[str | os.PathLike[str]] | None = None,
    *,
    require_trusted: bool = True,
) -> RemoteSettings | None:
    """The remote tier's settings from arguments, else the environment; None = no remote tier.

    ``remote=False`` means none, whatever the environment says. A remote without trusted keys is
    refused (`require_trusted`): a compiled module is native code.
    """
    if remote is False:
        return None
    url = remote or os.environ.get("WASMCACHE_REMOTE") or None
    if url is None:
        return None
    if signing_key is None:
        signing_key = os.environ.get("WASMCACHE_SIGNING_KEY") or None
    if not trusted_keys:
        trusted_keys = [p for p in os.environ.get("WASMCACHE_TRUSTED_KEYS", "").split(os.pathsep) if p]
    parse_url(url)
    if require_trusted and not trusted_keys:
        raise ConfigError(
            f"remote {url}: no trusted public keys; a compiled module is native code, so artifacts are loaded "
            "only when signed by a key you trust. Pass trusted_keys=[...] / --trusted-key, or set "
            "$WASMCACHE_TRUSTED_KEYS."
        )
    signing = _key_file(os.fspath(signing_key), "signing key") if signing_key is not None else None
    trusted = tuple(_key_file(os.fspath(k), "trusted key") for k in trusted_keys)
    return RemoteSettings(url, signing, trusted)
