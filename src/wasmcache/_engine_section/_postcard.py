"""Postcard decoding for the `.wasmtime.engine` section: a bounds-checked reader and field decoders.

Split from `_engine_section` (which holds the per-version layouts and the decoder built on this).
Everything malformed raises `EngineSectionError` with an offset, never IndexError or UnicodeDecodeError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias

from .._compat import EngineSectionError
from .._errors import CacheError


class UndecidableLayoutError(CacheError):
    """Internal: the bytes are well formed but cannot be named with certainty.

    Raised while decoding ``Tunables`` when a value is legal for Wasmtime but
    outside what this decoder can interpret (for example an operator-cost
    table, whose size depends on the wasmparser operator set).  The caller
    turns it into ``tunables=None`` rather than guessing.
    """


# postcard encodes `usize` lengths as 64-bit varints; u32/u64 as their width.
U32_BITS: Final = 32
U64_BITS: Final = 64


class Reader:
    """Bounds-checked cursor over the section bytes.

    Every read goes through here so truncation and malformed encodings always
    surface as :class:`EngineSectionError` with an offset, never as
    ``IndexError``/``UnicodeDecodeError`` from raw slicing.
    """

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self._data = data
        self._pos = pos

    @property
    def pos(self) -> int:
        """Current offset into the section."""
        return self._pos

    def remaining(self) -> int:
        """Number of unread bytes."""
        return len(self._data) - self._pos

    def _truncated(self, what: str) -> EngineSectionError:
        return EngineSectionError(f"engine section truncated while reading {what} at offset {self._pos}")

    def u8(self, what: str) -> int:
        """Read one raw byte."""
        if self._pos >= len(self._data):
            raise self._truncated(what)
        value = self._data[self._pos]
        self._pos += 1
        return value

    def take(self, n: int, what: str) -> bytes:
        """Read exactly ``n`` bytes."""
        if n > self.remaining():
            raise EngineSectionError(
                f"engine section truncated while reading {what} at offset {self._pos}: "
                f"need {n} bytes, {self.remaining()} left"
            )
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def varint(self, bits: int, what: str) -> int:
        """Read a LEB128 varint of at most ``bits`` bits, as postcard does.

        Postcard rejects encodings longer than the type allows and values
        that overflow it; doing the same keeps hostile input from producing
        enormous integers.
        """
        start = self._pos
        max_bytes = (bits + 6) // 7
        result = 0
        for i in range(max_bytes):
            byte = self.u8(what)
            result |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if result >> bits:
                    raise EngineSectionError(f"varint for {what} at offset {start} overflows u{bits}")
                return result
        raise EngineSectionError(f"varint for {what} at offset {start} is longer than {max_bytes} bytes")

    def boolean(self, what: str) -> bool:
        """Read a postcard bool, which must be exactly 0 or 1."""
        start = self._pos
        byte = self.u8(what)
        if byte > 1:
            raise EngineSectionError(f"invalid bool value {byte} for {what} at offset {start}")
        return byte == 1

    def string(self, what: str) -> str:
        """Read a postcard string (varint length + UTF-8)."""
        length = self.varint(U64_BITS, f"length of {what}")
        start = self._pos
        raw = self.take(length, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EngineSectionError(f"{what} at offset {start} is not valid UTF-8") from exc


# --------------------------------------------------------------------------
# Tunables layouts
# --------------------------------------------------------------------------

FieldDecoder: TypeAlias = Callable[[Reader, str], object]


@dataclass(frozen=True)
class Field:
    """One ``Tunables`` struct field, in declaration (= wire) order."""

    name: str
    decode: FieldDecoder


@dataclass(frozen=True)
class ZeroRun:
    """Bytes whose field order is not known from source.

    Accepted only when every byte is zero, because then every possible
    ordering of the fields involved decodes to the same values (``implied``).
    Any other content is reported as undecidable instead of guessed.
    """

    length: int
    implied: tuple[tuple[str, object], ...]


Step: TypeAlias = Field | ZeroRun


def dec_bool(r: Reader, name: str) -> object:
    return r.boolean(f"tunable {name}")


def dec_u32(r: Reader, name: str) -> object:
    return r.varint(U32_BITS, f"tunable {name}")


def dec_u64(r: Reader, name: str) -> object:
    return r.varint(U64_BITS, f"tunable {name}")


def dec_enum(variants: tuple[str, ...]) -> FieldDecoder:
    """Decoder for a fieldless Rust enum: varint discriminant -> variant name."""

    def decode(r: Reader, name: str) -> object:
        start = r.pos
        index = r.varint(U32_BITS, f"tunable {name}")
        if index >= len(variants):
            raise EngineSectionError(f"unknown variant {index} for tunable {name} at offset {start}")
        return variants[index]

    return decode


def dec_option(inner: FieldDecoder) -> FieldDecoder:
    """Decoder for ``Option<T>``: tag byte 0 (None) or 1 followed by ``T``."""

    def decode(r: Reader, name: str) -> object:
        start = r.pos
        tag = r.u8(f"option tag of tunable {name}")
        if tag == 0:
            return None
        if tag == 1:
            return inner(r, name)
        raise EngineSectionError(f"invalid option tag {tag} for tunable {name} at offset {start}")

    return decode


def dec_nonzero_u32(r: Reader, name: str) -> object:
    start = r.pos
    value = r.varint(U32_BITS, f"tunable {name}")
    if value == 0:
        raise EngineSectionError(f"tunable {name} at offset {start} must be non-zero")
    return value


def dec_operator_cost(r: Reader, name: str) -> object:
    """``OperatorCostStrategy { Table(Box<OperatorCost>), Default }``.

    ``Table`` holds one byte per wasmparser operator, a count that changes
    with every wasmparser upgrade, so it cannot be skipped reliably.
    """
    start = r.pos
    index = r.varint(U32_BITS, f"tunable {name}")
    if index == 1:
        return "Default"
    if index == 0:
        raise UndecidableLayoutError("operator cost table")
    raise EngineSectionError(f"unknown variant {index} for tunable {name} at offset {start}")
