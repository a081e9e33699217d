"""Decoder for the ``.wasmtime.engine`` section of precompiled Wasmtime modules.

Every ``Module.serialize()`` artifact (a ``.cwasm`` ELF file) carries a section
describing the engine that produced it.  Wasmtime reads it first when loading
an artifact to decide whether the artifact is compatible with the loading
engine.  The cache needs the same information *without* a live engine of the
right configuration (`wasmcache inspect` explains what an artifact was compiled
for, and why an engine refuses it), so this package decodes the section in pure
Python. The per-version `Tunables` layouts are data, in `_layouts`.

Layout, as written by ``append_compiler_info`` in Wasmtime's
``crates/wasmtime/src/engine/serialization.rs`` (unchanged from 40 to 50)::

    u8      format version (always 0)
    u8      length N of the version string
    N bytes version string (the Wasmtime major version, e.g. ``b"50"``)
    postcard-encoded ``Metadata``:
        target:       str                          (varint length + UTF-8)
        shared_flags: Vec<(str, FlagValue)>        (varint count + items)
        isa_flags:    Vec<(str, FlagValue)>
        tunables:     Tunables                     (version dependent struct)
        features:     u64                          (varint; WasmFeatures bits)

``FlagValue`` is ``enum { Enum(str), Num(u8), Bool(bool) }``, defined in
``crates/environ/src/compile/mod.rs`` (later ``module_artifacts.rs``).

``Tunables`` is defined in ``crates/environ/src/tunables.rs`` and changes
between releases; the per-version field lists below were transcribed from that
file at the ``v40.0.0`` ... ``v48.0.0`` tags (49 from the 49.0.0-dev tree) and
checked byte-for-byte against modules serialized by wasmtime-py 40 to 50.
See ``LAYOUTS`` for what is known about 50, whose source was not available.

Postcard encodings used: unsigned integers wider than u8 are LEB128 varints,
``u8`` is one raw byte, ``bool`` is one byte 0/1, ``Option`` is a 0/1 tag byte
followed by the value, enum discriminants are varint u32, strings and
sequences are a varint length followed by the contents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, TypeAlias

from .._compat import EngineSectionError
from ._layouts import LAYOUTS
from ._postcard import (
    U32_BITS,
    U64_BITS,
    Reader,
    Step,
    UndecidableLayoutError,
    ZeroRun,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "SUPPORTED_FORMAT_VERSION",
    "EngineInfo",
    "EngineSectionError",
    "FlagValue",
    "decode_engine_section",
    "known_tunables_versions",
]

FlagValue: TypeAlias = str | int | bool
"""A decoded Cranelift setting: enum name, small number, or boolean."""

SUPPORTED_FORMAT_VERSION: Final = 0
"""The only section format byte Wasmtime has written (``VERSION`` in serialization.rs)."""




def known_tunables_versions() -> frozenset[int]:
    """Wasmtime major versions whose ``Tunables`` layout this module knows."""
    return frozenset(LAYOUTS)


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineInfo:
    """Decoded contents of a ``.wasmtime.engine`` section.

    Mappings are read-only views; they are excluded from hashing (but not
    from equality) so instances stay hashable despite holding mappings.
    """

    format_version: int
    """Section format byte; always :data:`SUPPORTED_FORMAT_VERSION`."""
    wasmtime_version: str
    """Version string as stored: the major version (``"50"``) for 40-50, or
    a custom string if the embedder set ``Config::module_version``."""
    target: str
    """Target triple the code was compiled for."""
    shared_flags: Mapping[str, FlagValue] = field(hash=False)
    """Cranelift shared settings (``opt_level``, ``enable_nan_canonicalization``...)."""
    isa_flags: Mapping[str, FlagValue] = field(hash=False)
    """Target ISA settings (``has_avx2``...); reflect the compiling host's CPU."""
    compiler: str
    """``"cranelift"``, ``"winch"``, or ``"unknown"`` when undecidable."""
    opt_level: str | None
    """The ``opt_level`` shared flag, or ``None`` if absent."""
    tunables: Mapping[str, object] | None = field(hash=False)
    """Tunables by field name when the layout is known, else ``None``."""
    features: int | None
    """``WasmFeatures`` bits when the tunables could be skipped, else ``None``."""


def _read_flags(r: Reader, which: str) -> Mapping[str, FlagValue]:
    """Read a postcard ``Vec<(&str, FlagValue)>``."""
    start = r.pos
    count = r.varint(U64_BITS, f"{which} count")
    # Each entry needs at least a name length, a variant tag and a payload
    # byte; refusing impossible counts up front gives a clearer error.
    if count > r.remaining() // 3:
        raise EngineSectionError(
            f"engine section truncated: {which} count {count} at offset {start} "
            f"exceeds what the remaining {r.remaining()} bytes can hold"
        )
    flags: dict[str, FlagValue] = {}
    for _ in range(count):
        name = r.string(f"{which} name")
        tag_at = r.pos
        tag = r.varint(U32_BITS, f"{which} value tag of {name!r}")
        value: FlagValue
        if tag == 0:
            value = r.string(f"{which} enum value of {name!r}")
        elif tag == 1:
            value = r.u8(f"{which} numeric value of {name!r}")
        elif tag == 2:
            value = r.boolean(f"{which} bool value of {name!r}")
        else:
            raise EngineSectionError(f"unknown flag value tag {tag} for {which} {name!r} at offset {tag_at}")
        if name in flags:
            raise EngineSectionError(f"duplicate {which} entry {name!r}")
        flags[name] = value
    return MappingProxyType(flags)


def _major_version(version: str) -> int | None:
    """Major version from ``"50"`` or ``"50.0.1"``; ``None`` for custom strings."""
    match = re.fullmatch(r"(\d{1,6})(?:\.\d+){0,2}", version)
    return int(match.group(1)) if match else None


def _read_tunables(r: Reader, layout: tuple[Step, ...], partial: dict[str, object]) -> None:
    """Decode ``Tunables`` into ``partial``, field by field.

    ``partial`` is filled in place so that, if an undecidable value stops the
    decode, the fields read before it (notably ``winch_callable``) are still
    available to the caller.
    """
    for step in layout:
        if isinstance(step, ZeroRun):
            start = r.pos
            chunk = r.take(step.length, "tunables")
            if any(chunk):
                raise UndecidableLayoutError(
                    f"non-zero bytes at offset {start} in a region of unknown field order"
                )
            partial.update(step.implied)
        else:
            partial[step.name] = step.decode(r, step.name)


def _detect_compiler(tunables: Mapping[str, object]) -> str:
    """Cranelift or Winch, from the ``winch_callable`` tunable.

    Wasmtime sets ``winch_callable`` exactly when the strategy is Winch, and
    Winch refuses to compile without it, so it is authoritative.  Cranelift
    flags are no substitute: Winch artifacts carry ``opt_level=none`` and
    ``enable_verifier=true``, which Cranelift can also be configured to use.
    """
    winch = tunables.get("winch_callable")
    if winch is True:
        return "winch"
    if winch is False:
        return "cranelift"
    return "unknown"


def decode_engine_section(data: bytes | bytearray | memoryview) -> EngineInfo:
    """Decode the raw bytes of a ``.wasmtime.engine`` ELF section.

    The header, target and Cranelift flags are decoded for every Wasmtime
    version (their format has not changed from 40 to 50).  ``Tunables`` and
    the feature bits are decoded only for versions in
    :func:`known_tunables_versions`; otherwise they are ``None`` and the
    compiler is ``"unknown"``.

    Raises :class:`EngineSectionError` (a ``ValueError``) for anything
    malformed: truncation, invalid UTF-8, bad enum/bool/option encodings,
    oversized varints, an unsupported format byte, or trailing bytes after a
    fully decoded section.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EngineSectionError(f"engine section must be bytes-like, not {type(data).__name__}")
    r = Reader(bytes(data))

    format_version = r.u8("format version")
    if format_version != SUPPORTED_FORMAT_VERSION:
        raise EngineSectionError(
            f"unsupported engine section format version {format_version} "
            f"(expected {SUPPORTED_FORMAT_VERSION})"
        )
    version_len = r.u8("version string length")
    version_at = r.pos
    try:
        wasmtime_version = r.take(version_len, "version string").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EngineSectionError(f"version string at offset {version_at} is not valid UTF-8") from exc

    target = r.string("target triple")
    shared_flags = _read_flags(r, "shared flag")
    isa_flags = _read_flags(r, "ISA flag")
    opt_level = shared_flags.get("opt_level")
    opt_level_str = opt_level if isinstance(opt_level, str) else None

    tunables: Mapping[str, object] | None = None
    features: int | None = None
    partial: dict[str, object] = {}

    major = _major_version(wasmtime_version)
    layout = LAYOUTS.get(major) if major is not None else None
    if layout is None:
        # Unknown layout: nothing after the flags can be interpreted, but the
        # mandatory `features` varint means at least one byte must follow.
        if r.remaining() == 0:
            raise EngineSectionError("engine section truncated: tunables and features are missing")
    else:
        try:
            _read_tunables(r, layout, partial)
        except UndecidableLayoutError:
            pass
        else:
            tunables = MappingProxyType(dict(partial))
            features = r.varint(U64_BITS, "wasm features")
            if r.remaining():
                raise EngineSectionError(
                    f"{r.remaining()} unexpected trailing bytes after engine metadata at offset {r.pos}"
                )

    return EngineInfo(
        format_version=format_version,
        wasmtime_version=wasmtime_version,
        target=target,
        shared_flags=shared_flags,
        isa_flags=isa_flags,
        compiler=_detect_compiler(partial),
        opt_level=opt_level_str,
        tunables=tunables,
        features=features,
    )
