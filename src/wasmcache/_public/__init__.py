"""Substituters: publisher-signed precompiled modules from static hosts (a TUF tree; see `_publish`).

The consumer side in one object: `PublicTier(settings, state_dir=...)`, and one call on a local miss,
`tier.fetch(kind=, wasm_digest=, host_section=, dest=, name=) -> Fetched | None`. It refreshes each
substituter's signed metadata at most once per process, selects the artifact this host's engine
loads (same ABI, ISA flags a subset of the host's, the highest level; revoked ones are gone from the
metadata), downloads it streamed and capped by its signed sizes, checks it, and writes it into the
caller's file. Any failure is a miss (None, `last_reason`), never an error: the caller compiles.

This module is light (stdlib only): python-tuf, urllib3 and zstandard load only when a fetch happens
(`_client`). Settings come from arguments, else `$WASMCACHE_SUBSTITUTERS` (URLs, whitespace-separated,
priority order) and `$WASMCACHE_SUBSTITUTER_ROOTS` (`os.pathsep`-separated trusted root.json files);
a tool's package may declare its own substituter and root in the ``wasmcache.substituters`` entry
point group (read only on a miss, see `declared_substituters`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from .._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._client import Check, Fetched, PublicTier

__all__ = ["Check", "Fetched", "PublicTier", "Substituter", "SubstituterSettings", "check_substituters",
           "declared_substituters", "resolve_substituter_settings", "settings_for_cache"]

ENTRY_POINT_GROUP: Final = "wasmcache.substituters"
_SCHEMES: Final = ("https://", "http://", "file://")
_MAX_ROOT: Final = 512 << 10


class Substituter(NamedTuple):
    """One static host and the root.json contents it is trusted under (tried in order)."""

    url: str
    roots: tuple[bytes, ...]
    origin: str  # "argument", "environment" or "entry point <name>": for messages and doctor


class SubstituterSettings(NamedTuple):
    """What the user configured. `declared`: also ask the tools' entry points (on a miss)."""

    substituters: tuple[Substituter, ...]
    ca_file: str | None = None
    declared: bool = True


def _check_url(url: str, where: str) -> str:
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() + "://" in _SCHEMES:
        url = scheme.lower() + "://" + rest  # a scheme is case-insensitive (HTTP://host is http://host)
    # Every message below shows the URL with anything before an "@" masked: a password, whatever the form.
    shown = f"{scheme}://***@{url.rsplit('@', 1)[1]}" if sep and "@" in rest else url
    if sep and "@" in rest.split("/", 1)[0]:
        raise ConfigError(f"{where}: substituter {shown!r}: a substituter URL carries no credentials (they would "
                          "not be sent, and would show in logs and records): publish the tree where anyone may "
                          "read it; its signatures, not the host, are what the client trusts")
    if url.startswith(_SCHEMES) and any(c in url for c in "\t ") and not any(c in url for c in "\0\r\n"):
        spaced = shown.replace(" ", "%20").replace(chr(9), "%09")
        raise ConfigError(f"{where}: substituter {shown!r}: a URL has no spaces: write a space as %20 ({spaced})")
    if not url.startswith(_SCHEMES) or any(c in url for c in "\0\r\n\t ") or len(url) <= len("file://"):
        raise ConfigError(f"{where}: substituter {shown!r}: expected an https://, http:// or file:// URL")
    from urllib.parse import urlsplit  # noqa: PLC0415 - only when a substituter is configured

    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port out of range
    except ValueError as exc:  # its text may quote a piece of a password ("... as 'pa'")
        raise ConfigError(f"{where}: substituter {shown!r}: {'not a valid URL' if shown != url else exc}") from None
    if parts.scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path.startswith("/")):
        raise ConfigError(f"{where}: substituter {shown!r}: a file:// URL takes an absolute path (file:///srv/tree)")
    if parts.scheme != "file" and (not parts.hostname or port == 0):
        raise ConfigError(f"{where}: substituter {shown!r}: no host")
    return url.rstrip("/")


def read_root(path: str | os.PathLike[str] | bytes, where: str) -> bytes:
    """A trusted root.json's bytes (checked to be TUF root metadata only when used); `path` may be the
    contents themselves (bytes that are a JSON object), as an entry point's `root` may."""
    if isinstance(path, bytes) and path.lstrip()[:1] == b"{":
        if len(path) > _MAX_ROOT or b'"_type"' not in path or b'"root"' not in path:
            raise ConfigError(f"{where}: trusted root given as bytes: not a TUF root.json")
        return path
    name = os.fsdecode(path)
    try:
        with open(name, "rb") as f:
            data = f.read(_MAX_ROOT + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: trusted root {name}: cannot read: {exc.strerror or exc}") from None
    if len(data) > _MAX_ROOT or b'"_type"' not in data or b'"root"' not in data:
        raise ConfigError(f"{where}: trusted root {name}: not a TUF root.json (the root.json at the top of a "
                          "`wasmcache publish` tree)")
    return data


def resolve_substituter_settings(
    substituters: Sequence[str] | str | None = None,
    roots: Sequence[str | os.PathLike[str]] | None = None,
    *,
    ca_file: str | os.PathLike[str] | None = None,
    declared: bool = True,
) -> SubstituterSettings | None:
    """Settings from arguments, else the environment; None when no substituter is configured at all.

    Every configured URL is trusted under every configured root (a tree's own keys decide which one
    verifies it). ``substituters=[]`` means none, whatever the environment says (entry points still
    count unless ``declared=False``); the single word ``none`` turns off the declared ones too.
    Bad values raise a one-line `ConfigError`.
    """
    where = "--substituter"
    if substituters is None:
        where = "$WASMCACHE_SUBSTITUTERS"
        urls = os.environ.get("WASMCACHE_SUBSTITUTERS", "").split()
    else:
        urls = substituters.split() if isinstance(substituters, str) else list(substituters)
    root_where = "--substituter-root"
    if isinstance(roots, (str, bytes, os.PathLike)):
        roots = [roots]  # one root, not a sequence of its characters
    if roots is None:
        root_where = "$WASMCACHE_SUBSTITUTER_ROOTS"
        roots = [p for p in os.environ.get("WASMCACHE_SUBSTITUTER_ROOTS", "").split(os.pathsep) if p]
    if [url.lower() for url in urls] == ["none"]:  # substituters=["none"], WASMCACHE_SUBSTITUTERS=none (or NONE):
        # not even the declared ones
        return None
    checked = [_check_url(url, where) for url in urls]
    if checked and not roots:
        raise ConfigError("substituters configured but no trusted root: a precompiled module is native code, "
                          "loaded only when signed under a root you trust. Give the publisher's root.json: "
                          "--substituter-root FILE, $WASMCACHE_SUBSTITUTER_ROOTS, or substituter_roots=[...]")
    trusted = tuple(read_root(p, root_where) for p in roots)
    if ca_file is None:
        ca_file = os.environ.get("WASMCACHE_SUBSTITUTER_CA") or None
    if ca_file is not None and not os.path.isfile(ca_file):
        raise ConfigError(f"substituter CA file {os.fspath(ca_file)}: no such file")
    if not checked and not declared:
        return None
    origin = "environment" if where.startswith("$") else "argument"
    return SubstituterSettings(tuple(Substituter(url, trusted, origin) for url in checked),
                               os.fspath(ca_file) if ca_file is not None else None, declared)


def settings_for_cache(substituters: Sequence[str] | str | None,
                       roots: Sequence[str | os.PathLike[str]] | None) -> SubstituterSettings | None:
    """A `ModuleCache`'s substituters. Bad arguments raise ConfigError; a bad environment
    ($WASMCACHE_SUBSTITUTERS & co., not the program's code) is one warning (`settings_from_environment`)."""
    if substituters is not None or roots is not None:
        return resolve_substituter_settings(substituters, roots)
    from .._core import log  # noqa: PLC0415

    return settings_from_environment(
        lambda exc: log.warning("wasmcache: %s; only the substituters tools declare are asked", exc))


def settings_from_environment(problem: Callable[[ConfigError], None]) -> SubstituterSettings | None:
    """The environment's settings. When they are bad, `problem` hears why and the substituters tools
    declare are still asked: a typo in the user's variables does not turn off a tool's publisher."""
    try:
        return resolve_substituter_settings()
    except ConfigError as exc:
        problem(exc)
        return SubstituterSettings((), None, declared=True)


def declared_substituters(log_problem: Callable[[str], None] | None = None) -> tuple[Substituter, ...]:
    """Substituters that installed tool packages declare in the ``wasmcache.substituters`` entry point group.

    An entry point names an object (or a callable returning one) that is a mapping with ``url`` (a URL
    or a list of them) and ``root`` (a path to the publisher's root.json, or its bytes). A declared
    root vouches only for its own URLs. A broken declaration is skipped with one line (never an
    error: it is someone else's package).
    """
    from importlib.metadata import entry_points  # noqa: PLC0415 - only on a miss

    found: list[Substituter] = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {point.name} ({point.value})"
        try:
            found += _declared(point, where)
        except _Declaration as bad:
            if log_problem is not None:
                log_problem(f"{where}: ignored: {bad}")
    return tuple(found)


class _Declaration(Exception):  # noqa: N818 - why one entry point's declaration is skipped
    pass


def _declared(point: Any, where: str) -> list[Substituter]:
    try:
        value = point.load()
        if callable(value):
            value = value()
    except Exception as exc:  # another package's code: whatever it raises is its problem
        text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise _Declaration(f"loading it failed: {type(exc).__name__}{': ' + text if text else ''}") from None
    if not isinstance(value, Mapping):
        raise _Declaration(f"expected a mapping with 'url' and 'root', got {type(value).__name__}")
    missing = [name for name in ("url", "root") if name not in value]
    if missing:
        raise _Declaration(f"its mapping has no {' and no '.join(repr(m) for m in missing)}")
    urls, root = value["url"], value["root"]
    urls = [urls] if isinstance(urls, str) else urls
    if not isinstance(urls, (list, tuple)) or not urls or not all(isinstance(u, str) for u in urls):
        raise _Declaration("'url' must be a URL or a list of them")
    try:
        if isinstance(root, (bytes, bytearray)):
            root_bytes = bytes(root)
        elif isinstance(root, (str, os.PathLike)):
            root_bytes = read_root(root, where)
        else:
            raise _Declaration(f"'root' must be a path to root.json or its bytes, got {type(root).__name__}")
        return [Substituter(_check_url(url, where), (root_bytes,), f"entry point {point.name}") for url in urls]
    except ConfigError as exc:
        raise _Declaration(str(exc).removeprefix(f"{where}: ")) from None


def __getattr__(name: str) -> object:
    if name in ("PublicTier", "Fetched", "Check", "check_substituters"):
        from . import _client  # noqa: PLC0415

        return getattr(_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
