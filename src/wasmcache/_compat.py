"""Which precompiled artifacts this host's engine may load, decided from two `.wasmtime.engine` sections.

Wasmtime's `deserialize` (engine/serialization.rs) checks an artifact's section against the loading
engine: the version string (the major since 38.0.1), target arch/OS, shared flags and tunables must
match, wasm features must be a subset, and every ISA flag that is *true* in the artifact must be
detected on the *host CPU* (false flags always pass). So an artifact is loadable here when its
section, with every ISA boolean cleared (its ABI identity), equals the host engine's so cleared, and
its true ISA flags are a subset of the host's. Requiring the whole ABI to be identical is stricter
than wasmtime (features: subset; some shared flags ignored) on purpose: the cache key is the host
engine's own section, and a substitute must be what that engine would have compiled, apart from the
CPU level. wasmtime stays the final judge; this decides *before* downloading.

Pure Python over the section bytes, no wasmtime import, and its own few lines of postcard reading
(`_postcard` imports dataclasses, ~8 ms a process): cheap enough for the check of a substituted entry.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import blake3

from ._errors import CacheError


class EngineSectionError(CacheError, ValueError):
    """Raised for any engine section that is malformed or unsupported.

    A subclass of ``ValueError`` so callers can treat it as plain bad input,
    while still being able to tell it apart from unrelated ``ValueError``s.
    """


_BOOL_TAG: Final = 2
_U32_BYTES: Final = 5
_U64_BYTES: Final = 10


class _Reader:
    """A bounds-checked cursor: every malformed read raises EngineSectionError."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise EngineSectionError("engine section truncated")
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise EngineSectionError("engine section truncated")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def varint(self, max_bytes: int) -> int:
        result = 0
        for i in range(max_bytes):
            byte = self.u8()
            result |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                return result
        raise EngineSectionError("engine section has an overlong varint")

    def string(self) -> str:
        try:
            return self.take(self.varint(_U64_BYTES)).decode("utf-8")
        except UnicodeDecodeError:
            raise EngineSectionError("engine section has a string that is not UTF-8") from None

    def remaining(self) -> int:
        return len(self.data) - self.pos


class _IsaFlag(NamedTuple):
    name: str
    tag: int
    value: object
    offset: int  # where the value's byte(s) start in the section


class _Parsed(NamedTuple):
    version: str
    target: str
    isa: tuple[_IsaFlag, ...]


def _parse(section: bytes) -> _Parsed:
    """The version, target and ISA flags of `section` (with where each bool sits); EngineSectionError if malformed."""
    r = _Reader(bytes(section))
    if r.u8() != 0:
        raise EngineSectionError("unsupported engine section format version")
    version = r.take(r.u8()).decode("utf-8", "replace")
    target = r.string()
    for which in ("shared flag", "ISA flag"):
        count = r.varint(_U64_BYTES)
        if count > r.remaining() // 3:
            raise EngineSectionError(f"engine section truncated: {which} count {count}")
        flags: list[_IsaFlag] = []
        for _ in range(count):
            name = r.string()
            tag = r.varint(_U32_BYTES)
            offset = r.pos
            value: object
            if tag == 0:
                value = r.string()
            elif tag == 1:
                value = r.u8()
            elif tag == _BOOL_TAG:
                byte = r.u8()
                if byte > 1:
                    raise EngineSectionError(f"invalid bool {byte} for {which} {name!r}")
                value = byte == 1
            else:
                raise EngineSectionError(f"unknown flag value tag {tag} for {which} {name!r}")
            flags.append(_IsaFlag(name, tag, value, offset))
    if r.remaining() == 0:
        raise EngineSectionError("engine section truncated: tunables and features are missing")
    return _Parsed(version, target, tuple(flags))


def abi_identity(section: bytes) -> bytes:
    """`section` with every ISA boolean cleared: version, triple, shared flags, tunables and features."""
    parsed = _parse(section)
    cleared = bytearray(section)
    for flag in parsed.isa:
        if flag.tag == _BOOL_TAG:
            cleared[flag.offset] = 0
    return bytes(cleared)


def abi_hash(section: bytes) -> str:
    """A hex digest of `abi_identity(section)`: what a publisher's metadata names and a consumer looks up."""
    return blake3.blake3(b"wasmcache-abi-v1\0" + abi_identity(section)).hexdigest()


def isa_flags(section: bytes) -> frozenset[str]:
    """The ISA flags that are true in `section` (the CPU features its code may use)."""
    return frozenset(f.name for f in _parse(section).isa if f.tag == _BOOL_TAG and f.value is True)


def loadable(artifact_section: bytes, host_section: bytes) -> str | None:
    """None when an engine whose section is `host_section` may load the artifact; else one short reason.

    `host_section` must be the loading engine's own section on this host (natively detected ISA flags,
    as wasmcache's engine fingerprint reads it): its true ISA flags are what this CPU has.
    """
    try:
        artifact = _parse(artifact_section)
    except (EngineSectionError, UnicodeDecodeError):
        return "malformed engine section"
    host = _parse(host_section)
    if artifact.version != host.version:
        return "other wasmtime major"
    if artifact.target != host.target:
        return "other target"
    if abi_identity(artifact_section) != abi_identity(host_section):
        return "other engine settings"
    lacking = isa_flags(artifact_section) - isa_flags(host_section)
    if lacking:
        return "needs CPU features this host lacks: " + " ".join(sorted(lacking))
    return None
