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

Pure Python over the section bytes, no wasmtime import: used on the miss path of substituted entries.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import blake3

from ._errors import EngineSectionError
from ._postcard import U32_BITS, U64_BITS, Reader

_BOOL_TAG: Final = 2


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
    r = Reader(bytes(section))
    if r.u8("format version") != 0:
        raise EngineSectionError("unsupported engine section format version")
    version = r.take(r.u8("version string length"), "version string").decode("utf-8", "replace")
    target = r.string("target triple")
    for which in ("shared flag", "ISA flag"):
        count = r.varint(U64_BITS, f"{which} count")
        if count > r.remaining() // 3:
            raise EngineSectionError(f"engine section truncated: {which} count {count}")
        flags: list[_IsaFlag] = []
        for _ in range(count):
            name = r.string(f"{which} name")
            tag = r.varint(U32_BITS, f"{which} tag")
            offset = r.pos
            value: object
            if tag == 0:
                value = r.string(f"{which} enum value")
            elif tag == 1:
                value = r.u8(f"{which} numeric value")
            elif tag == _BOOL_TAG:
                value = r.boolean(f"{which} bool value")
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
