"""`--invoke` values, parsed and printed exactly as `wasmtime run` (49) does it in Rust.

Arguments: integers are decimal (`010` is 10; an optional `+`, `-` for negatives) or `0x` hex,
range-checked for the parameter's type with Rust's own error messages; floats follow Rust's
`f32`/`f64` grammar (`1e5`, `.5`, `5.`, `inf`, `infinity`, `nan`; no `0x`, no `_`, no spaces)
and round like Rust's parser (correctly, straight to f32: no double rounding through f64).

Results: Rust's `Display` for floats, which never uses an exponent (f32 `1e30` prints
`1000000000000000000000000000000`) and prints the shortest digits that read back as the same
value (f32 `0.3` prints `0.3`, not `0.30000001192092896`), `NaN`, `inf`, `-0`; references as
`<null funcref>` / `<funcref>` & co.; v128 as one unsigned 128-bit decimal.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Final

from ._outcome import BadValueError

_I32: Final = (-(1 << 31), (1 << 31) - 1)
_I64: Final = (-(1 << 63), (1 << 63) - 1)
_RANGES: Final = {"i32": _I32, "i64": _I64}

# Rust's `dec2flt` grammar; the words are case-insensitive, the digits ASCII only.
_FLOAT: Final = re.compile(r"[+-]?(?:(?i:inf|infinity|nan)|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)")
_F32_MAX_BITS: Final = 0x7F7FFFFF


def parse_int(text: str, kind: str) -> int:
    """`text` as wasmtime parses an i32/i64 argument: `str::parse`, or `from_str_radix(.., 16)` after `0x`."""
    if text.startswith(("0x", "0X")):
        return _rust_int(text[2:], 16, kind)
    return _rust_int(text, 10, kind)


def _rust_int(text: str, radix: int, kind: str) -> int:
    # core::num's from_str_radix, step by step: its errors depend on where the first problem is
    # ("99999999999x" is too large, not an invalid digit).
    if not text:
        raise BadValueError("cannot parse integer from empty string")
    low, high = _RANGES[kind]
    negative = text[0] == "-"
    digits = text[1:] if text[0] in "+-" else text
    if not digits:
        raise BadValueError("invalid digit found in string")
    value = 0
    for char in digits:
        digit = _digit(char, radix)
        value = value * radix + digit
        if not negative and value > high:
            raise BadValueError("number too large to fit in target type")
        if negative and -value < low:
            raise BadValueError("number too small to fit in target type")
    return -value if negative else value


def _digit(char: str, radix: int) -> int:
    if "0" <= char <= "9":
        digit = ord(char) - ord("0")
    elif "a" <= char.lower() <= "z" and char.isascii():
        digit = ord(char.lower()) - ord("a") + 10
    else:
        raise BadValueError("invalid digit found in string")
    if digit >= radix:
        raise BadValueError("invalid digit found in string")
    return digit


def parse_float(text: str, kind: str) -> float:
    """`text` as Rust's `str::parse::<f32|f64>`; an f32 is returned as the float it rounds to."""
    if not text:
        raise BadValueError("cannot parse float from empty string")
    if _FLOAT.fullmatch(text) is None:
        raise BadValueError("invalid float literal")
    value = float(text)  # correctly rounded to f64 (Python accepts a superset of the grammar above)
    return value if kind == "f64" else _round_to_f32(value, text)


def _f32_bits(value: float) -> int:
    bits: int = struct.unpack("<I", struct.pack("<f", value))[0]
    return bits


def _f32_from_bits(bits: int) -> float:
    value: float = struct.unpack("<f", struct.pack("<I", bits))[0]
    return value


def _round_to_f32(value: float, text: str) -> float:
    """Round an f64 (parsed from `text`) to f32 as if `text` had been rounded to f32 directly."""
    if math.isnan(value) or math.isinf(value) or value == 0:
        return value
    magnitude = abs(value)
    sign = -1.0 if value < 0 else 1.0
    largest = _f32_from_bits(_F32_MAX_BITS)
    overflow = (2.0**128) - (2.0**103)  # halfway between the largest f32 and 2^128: rounds to inf (even)
    if magnitude > overflow:
        return sign * math.inf
    if magnitude == overflow:
        from fractions import Fraction  # noqa: PLC0415 - rare: only exact halfway cases need the exact value

        return sign * (largest if abs(Fraction(text)) < Fraction(overflow) else math.inf)
    rounded = _f32_from_bits(_f32_bits(magnitude))  # nearest, ties to even, from the f64
    if rounded == magnitude:
        return sign * rounded
    # Double rounding can only go wrong when the f64 lies exactly halfway between two f32s.
    bits = _f32_bits(rounded)
    other = _f32_from_bits(bits + 1) if rounded < magnitude else _f32_from_bits(bits - 1)
    if (rounded + other) / 2 != magnitude:
        return sign * rounded
    from fractions import Fraction  # noqa: PLC0415 - rare: only exact halfway cases need the exact value

    exact = abs(Fraction(text))
    low, high = sorted((rounded, other))
    if exact > Fraction(magnitude):
        return sign * high
    if exact < Fraction(magnitude):
        return sign * low
    return sign * rounded  # a true tie: ties to even, which the f64 -> f32 conversion did


# --- printing ---------------------------------------------------------------------------------------


def format_float(value: float, kind: str) -> str:
    """Rust's `Display` for f32/f64: shortest round-trip digits, never an exponent."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign = "-" if value < 0 else ""
    digits, point = _shortest_f32(abs(value)) if kind == "f32" else _decimal_digits(repr(abs(value)))
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{sign}{digits}{'0' * (point - len(digits))}"
    return f"{sign}{digits[:point]}.{digits[point:]}"


def _decimal_digits(text: str) -> tuple[str, int]:
    """("12345", 2) for "123.45" or "1.2345e2": significant digits and the decimal point's place."""
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent) if exponent else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    return stripped.rstrip("0") or "0", point


def _shortest_f32(value: float) -> tuple[str, int]:
    """The fewest significant digits that read back as this f32 (the nearest such, as Ryu picks)."""
    for precision in range(1, 10):
        mantissa, _, exponent = f"{value:.{precision - 1}e}".partition("e")
        nearest = int(mantissa.replace(".", ""))
        scale = int(exponent) - (precision - 1)
        if _reads_back(nearest, scale, value):
            return _decimal_digits(f"{nearest}e{scale}")
        # Next to a power of two the rounding interval is lopsided: a neighbour of the nearest
        # decimal may read back when the nearest does not.
        fits = [c for c in (nearest - 1, nearest + 1) if c > 0 and _reads_back(c, scale, value)]
        if fits:
            from fractions import Fraction  # noqa: PLC0415 - rare

            best = min(fits, key=lambda c: abs(Fraction(c) * Fraction(10) ** scale - Fraction(value)))
            return _decimal_digits(f"{best}e{scale}")
    return _decimal_digits(repr(value))  # unreachable: 9 digits always read back as the same f32


def _reads_back(digits: int, scale: int, value: float) -> bool:
    literal = f"{digits}e{scale}"
    return _round_to_f32(float(literal), literal) == value


def format_v128(raw: bytes) -> str:
    """wasmtime prints a v128 result as one unsigned little-endian 128-bit integer."""
    return str(int.from_bytes(raw, "little"))
