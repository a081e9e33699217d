"""Where things live under a cache root: every name of the layout, and nothing else.

    ROOT/
      CACHEDIR.TAG                 backup tools skip the root (https://bford.info/cachedir/)
      wasmcache-layout             our marker: clear/gc/verify --fix refuse a directory without it
      usage                        "<entries> <bytes>" of the whole root, so stats() and the size
                                   bound need no scan (exact after gc/verify, approximate between)
      gc.lock                      one collector at a time
      events, events.1             what the drop-in did: a line per process that it served (at exit)
      engines/<memo>.engine        validated engine settings and their engine sections
      digests/<id>                 a file's digest by its identity (device, inode, size, mtime, ctime)
      quarantine/<key>.<ns>.<t>    bad entries moved aside (neither .cwasm nor .tmp)
      substituters/                each substituter's trusted TUF metadata (rollback protection; kept by
                                   clear) and brief memories of a host that is down or has no artifact
      ns-<fingerprint[:32]>/       one namespace per engine configuration
        engine                     that engine's .wasmtime.engine section (what verify checks against)
        <key>.cwasm                an entry: read-only, published by rename, never written again
        <key>.rec                  its record: identity after publish + content digest (JSON)
        <key>.lock                 held while a process compiles, publishes or evicts that key
        <key>.<random>.tmp         a writer's temp file (the writer holds an flock on it)
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from pathlib import Path

LAYOUT_VERSION: Final = 1
MARKER_NAME: Final = "wasmcache-layout"
CACHEDIR_TAG_NAME: Final = "CACHEDIR.TAG"
USAGE_NAME: Final = "usage"
GC_LOCK_NAME: Final = "gc.lock"
EVENTS_NAME: Final = "events"
EVENTS_OLD_NAME: Final = "events.1"
ENGINES_DIR: Final = "engines"
DIGESTS_DIR: Final = "digests"
QUARANTINE_DIR: Final = "quarantine"
SUBSTITUTERS_DIR: Final = "substituters"
ROOT_FILES: Final = frozenset({MARKER_NAME, CACHEDIR_TAG_NAME, USAGE_NAME, GC_LOCK_NAME, EVENTS_NAME, EVENTS_OLD_NAME})
ROOT_DIRS: Final = frozenset({ENGINES_DIR, DIGESTS_DIR, QUARANTINE_DIR, SUBSTITUTERS_DIR})

NAMESPACE_PREFIX: Final = "ns-"
NAMESPACE_ENGINE_FILE: Final = "engine"
ENTRY_SUFFIX: Final = ".cwasm"
RECORD_SUFFIX: Final = ".rec"
LOCK_SUFFIX: Final = ".lock"
TEMP_SUFFIX: Final = ".tmp"
MEMO_SUFFIX: Final = ".engine"
WHY_SUFFIX: Final = ".why"
Kind = Literal["module", "component"]
KINDS: Final = ("module", "component")
_HEX: Final = "0123456789abcdef"
# What wasmcache itself writes, exactly: nothing else in a root is ever collected, cleared or reaped.
# Patterns, compiled by `re` on first use (and cached there): a hit needs none of them, and each
# compile costs every process ~0.1 ms at import.
_NAMESPACE_RE: Final = r"^ns-[0-9a-f]{32}$"
_TEMP_RE: Final = r"^[^.]+\.[0-9a-f]{12}\.tmp$"  # <stem>.<12 hex>.tmp (`_fs.temp_path_for`)
_KEYED_RE: Final = r"^[0-9a-f]{64}(\.cwasm|\.rec|\.lock|\.[0-9a-f]{12}\.tmp)$"


def is_key(text: str) -> bool:
    """64 lowercase hex digits: a key, or a blake3 digest (no regular expression: a hit reads three of them)."""
    return len(text) == 64 and not text.strip(_HEX)


def namespace_name(fingerprint: str) -> str:
    return NAMESPACE_PREFIX + fingerprint[:32]


def is_namespace_name(name: str) -> bool:
    return re.match(_NAMESPACE_RE, name) is not None


def is_temp_name(name: str) -> bool:
    """A writer's temp file: `<stem>.<12 hex>.tmp`, as `_fs.temp_path_for` names them."""
    return re.match(_TEMP_RE, name) is not None


def is_entry_name(name: str) -> bool:
    return len(name) == 64 + len(ENTRY_SUFFIX) and name.endswith(ENTRY_SUFFIX) and is_key(name[:64])


def is_keyed_name(name: str) -> bool:
    """A file of one key in a namespace: its entry, record, lock or a writer's temp file."""
    return re.match(_KEYED_RE, name) is not None


def key_of(name: str) -> str:
    """The key a namespace file belongs to (`<key>.cwasm`, `<key>.rec`, `<key>.<random>.tmp` ...)."""
    return name.split(".", 1)[0]


def entry_path(namespace: Path, key: str) -> Path:
    return namespace / f"{key}{ENTRY_SUFFIX}"


def record_path(namespace: Path, key: str) -> Path:
    return namespace / f"{key}{RECORD_SUFFIX}"


def lock_path(namespace: Path, key: str) -> Path:
    return namespace / f"{key}{LOCK_SUFFIX}"
