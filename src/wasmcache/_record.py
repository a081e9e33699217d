"""Entry records: what was published under a key (`<key>.rec`, JSON next to the entry).

A record holds the entry's identity as stat'ed after the final rename and the blake3 of its
content. An entry whose open fd has that identity is the very file that was published; any other
entry must prove itself by content (see `_storage.Namespace.check`).
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any, Final

from ._fs import READ_FLAGS, write_atomically
from ._layout import KINDS, is_key

if TYPE_CHECKING:
    from pathlib import Path

RECORD_VERSION: Final = 1
_MAX_RECORD: Final = 64 << 10
ORIGINS: Final = ("compiled", "snapshot", "remote", "substituted")


class _ScannerContext:
    """What json's C scanner reads from a `json.JSONDecoder`: the defaults, and no NaN or Infinity."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> Any:
        raise ValueError(f"record holds {name}")


_scan: Any = None


def _loads(raw: bytes) -> Any:
    """`json.loads` of a record, through the C scanner json.loads itself uses (`_json.make_scanner`).

    Hand-written because of a measured cost: a hit reads one record, and `import json` costs a hit
    process ~1.8 ms (its package imports the encoder too and compiles six regular expressions),
    a sixth of what wasmcache may add to the process (issue 14, item 7). The same parser, the same
    errors (ValueError); json itself where `_json` is missing (not CPython).
    """
    global _scan  # noqa: PLW0603 - made once per process
    text = raw.decode("utf-8")
    if _scan is None:
        try:
            from _json import make_scanner  # noqa: PLC0415

            _scan = make_scanner(_ScannerContext())  # type: ignore[arg-type]  # duck-typed, as JSONDecoder
        except ImportError:
            import json  # noqa: PLC0415

            _scan = json.JSONDecoder(parse_constant=_ScannerContext.parse_constant).scan_once  # type: ignore[attr-defined]
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = _scan(text, start)
    except StopIteration as exc:
        raise ValueError(f"record is not JSON (at character {exc.value})") from None
    if text[end:].strip(" \t\n\r"):
        raise ValueError(f"record is not JSON (extra data at character {end})")
    return value


# Identity and Record are written out, not NamedTuples (nor dataclasses, whose import costs ~5 ms):
# building a NamedTuple class costs every process that loads a module ~0.15-0.25 ms, and a hit needs
# both (measured in a fresh process after `import wasmtime`: issue 14, item 7).
class Identity(tuple[int, int, int, int, int]):
    """What a stat says about a file; equal identities mean the very file that was published.

    A tuple of (dev, ino, size, mtime_ns, ctime_ns): compared and hashed as one.
    """

    __slots__ = ()
    FIELDS: Final = ("dev", "ino", "size", "mtime_ns", "ctime_ns")

    def __new__(cls, dev: int, ino: int, size: int, mtime_ns: int, ctime_ns: int) -> Identity:  # noqa: PYI034 - final
        return tuple.__new__(cls, (dev, ino, size, mtime_ns, ctime_ns))

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    @property
    def dev(self) -> int:
        return self[0]

    @property
    def ino(self) -> int:
        return self[1]

    @property
    def size(self) -> int:
        return self[2]

    @property
    def mtime_ns(self) -> int:
        return self[3]

    @property
    def ctime_ns(self) -> int:
        return self[4]

    def _asdict(self) -> dict[str, int]:
        return dict(zip(self.FIELDS, self, strict=True))

    def __getnewargs__(self) -> tuple[int, int, int, int, int]:  # copy and pickle, as a NamedTuple's
        return (self[0], self[1], self[2], self[3], self[4])

    def __repr__(self) -> str:
        return "Identity(" + ", ".join(f"{name}={value}" for name, value in zip(self.FIELDS, self, strict=True)) + ")"


class Record:
    """What was published under a key."""

    __slots__ = ("content_digest", "created", "identity", "key", "kind", "level", "origin", "size", "source",
                 "substituter", "wasm_digest", "wasmtime_version")

    def __init__(self, *, key: str, kind: str, wasm_digest: str, content_digest: str, size: int,
                 identity: Identity | None, source: str, wasmtime_version: str, created: float,
                 origin: str = "compiled", substituter: str | None = None, level: str | None = None) -> None:
        self.key = key
        self.kind = kind
        self.wasm_digest = wasm_digest  # of the input: the wasm, or (origin "snapshot") the serialized file taken in
        self.content_digest = content_digest
        self.size = size
        self.identity = identity  # None until the entry has been renamed into place
        self.source = source
        self.wasmtime_version = wasmtime_version
        self.created = created
        self.origin = origin  # compiled here | snapshot of a program's own .cwasm | remote tier | substituter
        self.substituter = substituter  # origin "substituted": the URL it came from
        self.level = level  # origin "substituted": the CPU level it was compiled for ("x86-64-v3" ...)

    def _asdict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def _replace(self, **changes: Any) -> Record:
        return Record(**(self._asdict() | changes))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Record) and self._asdict() == other._asdict()

    __hash__ = None  # type: ignore[assignment]  # mutable slots: not a key

    def __repr__(self) -> str:
        return "Record(" + ", ".join(f"{name}={value!r}" for name, value in self._asdict().items()) + ")"

    def to_json(self) -> bytes:
        fields: dict[str, Any] = self._asdict()
        fields["identity"] = self.identity._asdict() if self.identity is not None else None
        fields["version"] = RECORD_VERSION
        import json  # noqa: PLC0415 - written on a miss only (see _loads)

        return json.dumps(fields, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Record:
        """Parse a record; anything malformed raises ValueError (records are files we did not lock)."""
        try:
            fields = _loads(raw)
        except (UnicodeDecodeError, RecursionError) as exc:
            raise ValueError(f"record is not JSON: {exc}") from None
        if not isinstance(fields, dict) or fields.get("version") != RECORD_VERSION:
            raise ValueError("record has no supported version")

        def text(name: str, default: str | None = None, *, key: bool = False) -> str:
            value = fields.get(name, default)
            if not isinstance(value, str) or (key and not is_key(value)):
                raise ValueError(f"record field {name} is missing or malformed")
            return value

        def number(name: str, value: Any = None) -> int:
            value = fields.get(name) if value is None else value
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"record field {name} is missing or malformed")
            return value

        identity = fields.get("identity")
        if identity is not None:
            if not isinstance(identity, dict) or set(identity) != {"dev", "ino", "size", "mtime_ns", "ctime_ns"}:
                raise ValueError("record field identity is malformed")
            identity = Identity(**{k: number(f"identity.{k}", v) for k, v in identity.items()})
        kind = text("kind")
        if kind not in KINDS:
            raise ValueError("record field kind is malformed")
        origin = text("origin", "compiled")
        if origin not in ORIGINS:
            raise ValueError("record field origin is malformed")
        created = fields.get("created")
        if not isinstance(created, (int, float)) or isinstance(created, bool):
            raise ValueError("record field created is malformed")  # noqa: TRY004 - bad data, not a caller's type
        extras = {name: fields.get(name) for name in ("substituter", "level")}
        if any(value is not None and (not isinstance(value, str) or len(value) > 2048) for value in extras.values()):
            raise ValueError("record field substituter or level is malformed")
        return cls(
            key=text("key", key=True),
            kind=kind,
            wasm_digest=text("wasm_digest", key=True),
            content_digest=text("content_digest", key=True),
            size=number("size"),
            identity=identity,
            source=text("source"),
            wasmtime_version=text("wasmtime_version"),
            created=float(created),
            origin=origin,
            **extras,
        )


def read_record(path: Path) -> tuple[Record, os.stat_result] | None:
    """The record at `path` and its stat (its mtime is the entry's last use), or None if absent/bad."""
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_RECORD:
            return None
        raw = os.read(fd, _MAX_RECORD)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return Record.from_json(raw), st
    except ValueError:
        return None


def write_record(path: Path, record: Record) -> None:
    write_atomically(path, record.to_json(), mode=0o644, durable=True)
