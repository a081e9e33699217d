"""Tests for the `.wasmtime.engine` section decoder.

Two kinds of input: sections from modules serialized by the installed wasmtime (so a
Wasmtime upgrade that changes the layout fails here first), and recorded Tunables bytes
from wasmtime-py 40 to 50 (so every known layout stays covered with only one wasmtime
installed). Hostile input must only ever raise ValueError: the cache reads files it did
not write.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import struct

import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasmcache._engine_section import (
    EngineInfo,
    EngineSectionError,
    decode_engine_section,
    known_tunables_versions,
)
from wasmgen import _leb

WAT = '(module (func (export "f") (param i32) (result i32) local.get 0 i32.const 1 i32.add))'
WASMTIME_MAJOR = int(importlib.metadata.version("wasmtime").split(".")[0])
# wasmtime-py's C API only gained WASMTIME_STRATEGY_WINCH (= 2) in 45; before that the
# value is out of range for the C enum, so passing it is undefined behaviour.
WINCH_MIN_MAJOR = 45
_STRATEGY_CRANELIFT = 1
_STRATEGY_WINCH = 2


def _machine_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


# -- a throwaway ELF64 reader: the real one lives in wasmcache._elf -------------------


def _elf_section(data: bytes, wanted: str) -> bytes:
    """Return the contents of section `wanted` from a little-endian ELF64 file."""
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab_offset = headers[shstrndx][4]
    for name_offset, _type, _flags, _addr, offset, size in headers:
        start = strtab_offset + name_offset
        name = data[start : data.index(b"\x00", start)].decode()
        if name == wanted:
            return data[offset : offset + size]
    raise AssertionError(f"no section {wanted!r}")


def _section_for(config: wasmtime.Config) -> bytes:
    module = wasmtime.Module(wasmtime.Engine(config), WAT)
    return _elf_section(bytes(module.serialize()), ".wasmtime.engine")


@functools.cache
def _default_section() -> bytes:
    return _section_for(wasmtime.Config())


def _decode(config: wasmtime.Config) -> EngineInfo:
    return decode_engine_section(_section_for(config))


def _known_layout() -> bool:
    return WASMTIME_MAJOR in known_tunables_versions()


# -- real sections from the installed wasmtime ----------------------------------------


def test_default_engine_section() -> None:
    info = decode_engine_section(_default_section())
    assert info.format_version == 0
    assert info.wasmtime_version.split(".")[0] == str(WASMTIME_MAJOR)
    assert _machine_arch() in info.target
    assert info.opt_level == "speed"
    assert info.shared_flags["opt_level"] == "speed"
    assert info.isa_flags, "ISA flags describe the host CPU and are never empty"
    if _known_layout():
        assert info.compiler == "cranelift"
        assert info.tunables is not None
        assert info.tunables["consume_fuel"] is False
        assert info.tunables["epoch_interruption"] is False
        assert info.features is not None
        assert info.features > 0


def test_explicit_cranelift_strategy() -> None:
    config = wasmtime.Config()
    wasmtime._ffi.wasmtime_config_strategy_set(config.ptr(), _STRATEGY_CRANELIFT)
    info = _decode(config)
    if _known_layout():
        assert info.compiler == "cranelift"


@pytest.mark.skipif(WASMTIME_MAJOR < WINCH_MIN_MAJOR, reason="wasmtime-py C API has no Winch strategy")
@pytest.mark.skipif(_machine_arch() not in {"x86_64", "aarch64"}, reason="Winch supports x86_64/aarch64")
def test_winch_is_detected() -> None:
    config = wasmtime.Config()
    wasmtime._ffi.wasmtime_config_strategy_set(config.ptr(), _STRATEGY_WINCH)
    info = _decode(config)
    if not _known_layout():
        pytest.skip(f"Tunables layout of wasmtime {WASMTIME_MAJOR} is not known")
    assert info.compiler == "winch"
    assert info.tunables is not None
    assert info.tunables["winch_callable"] is True


def test_winch_is_not_confused_with_cranelift_opt_level_none() -> None:
    # Winch artifacts carry opt_level=none; Cranelift at opt_level none must still be Cranelift.
    config = wasmtime.Config()
    config.cranelift_opt_level = "none"
    info = _decode(config)
    assert info.opt_level == "none"
    if _known_layout():
        assert info.compiler == "cranelift"


def test_opt_level_speed_and_size() -> None:
    config = wasmtime.Config()
    config.cranelift_opt_level = "speed_and_size"
    assert _decode(config).opt_level == "speed_and_size"


@pytest.mark.parametrize(("fuel", "epoch"), [(True, False), (False, True), (True, True)])
def test_fuel_and_epoch_round_trip(fuel: bool, epoch: bool) -> None:
    config = wasmtime.Config()
    config.consume_fuel = fuel
    config.epoch_interruption = epoch
    info = _decode(config)
    if info.tunables is None:
        pytest.skip(f"Tunables layout of wasmtime {WASMTIME_MAJOR} is not known")
    assert info.tunables["consume_fuel"] is fuel
    assert info.tunables["epoch_interruption"] is epoch


def test_debug_info_sets_debug_native() -> None:
    config = wasmtime.Config()
    config.debug_info = True
    info = _decode(config)
    if info.tunables is None:
        pytest.skip(f"Tunables layout of wasmtime {WASMTIME_MAJOR} is not known")
    assert info.tunables["debug_native"] is True


def test_nan_canonicalization_is_a_shared_flag() -> None:
    config = wasmtime.Config()
    # wasmtime-py < 45 has no Config property for this; the C setter exists in all versions.
    wasmtime._ffi.wasmtime_config_cranelift_nan_canonicalization_set(config.ptr(), True)
    assert _decode(config).shared_flags["enable_nan_canonicalization"] is True
    assert decode_engine_section(_default_section()).shared_flags["enable_nan_canonicalization"] is False


def test_memory_tunables_round_trip() -> None:
    config = wasmtime.Config()
    if not hasattr(type(config), "memory_reservation"):
        pytest.skip("wasmtime-py has no memory_reservation property")
    config.memory_reservation = 1 << 20
    config.memory_guard_size = 1 << 16
    config.memory_init_cow = False
    info = _decode(config)
    if info.tunables is None:
        pytest.skip(f"Tunables layout of wasmtime {WASMTIME_MAJOR} is not known")
    assert info.tunables["memory_reservation"] == 1 << 20
    assert info.tunables["memory_guard_size"] == 1 << 16
    assert info.tunables["memory_init_cow"] is False


def test_every_truncation_of_a_real_section_is_rejected() -> None:
    data = _default_section()
    if decode_engine_section(data).tunables is None:
        pytest.skip("without a known layout a section cut after its flags cannot be detected")
    for cut in range(len(data)):
        with pytest.raises(ValueError, match="truncated"):
            decode_engine_section(data[:cut])


def test_trailing_bytes_are_rejected() -> None:
    data = _default_section()
    if decode_engine_section(data).tunables is None:
        pytest.skip("without a known layout trailing bytes cannot be detected")
    with pytest.raises(ValueError, match="trailing"):
        decode_engine_section(data + b"\x00")


def test_engine_info_is_hashable_and_read_only() -> None:
    info = decode_engine_section(_default_section())
    assert info == decode_engine_section(_default_section())
    assert hash(info) == hash(decode_engine_section(_default_section()))
    with pytest.raises(TypeError):
        info.shared_flags["opt_level"] = "none"  # type: ignore[index]


# -- recorded sections from every supported wasmtime-py release -----------------------


_varint = _leb  # postcard's varint is unsigned LEB128, as in the wasm binary format


def _string(text: str) -> bytes:
    raw = text.encode()
    return _varint(len(raw)) + raw


def _synthetic_section(version: str, tail: bytes, *, target: str = "x86_64-unknown-linux-gnu") -> bytes:
    """Header, target and a few flags as Wasmtime writes them, followed by `tail`."""
    shared = [("opt_level", b"\x00" + _string("speed")), ("probestack_size_log2", b"\x01\x0c")]
    isa = [("has_avx2", b"\x02\x01")]
    body = _string(target)
    for flags in (shared, isa):
        body += _varint(len(flags)) + b"".join(_string(name) + value for name, value in flags)
    return bytes([0, len(version)]) + version.encode() + body + tail


# Tunables + features bytes (everything after the ISA flags) of `Module.serialize()` for a
# small module, recorded on x86_64 Linux with wasmtime-py 40.0.0 ... 50.0.1. "winch" is
# strategy 2, "fuel_epoch" sets consume_fuel and epoch_interruption.
_RECORDED = """
40:default:010080808080108080801080808080080000000000010101010000000101000232d00fffbb8788c001
40:fuel_epoch:010080808080108080801080808080080000000101010101010000000101000232d00fffbb8788c001
41:default:010080808080108080801080808080080000000000010101010000000101000232d00fffbb8788c001
42:default:010080808080108080801080808080080000000000010101010000000101000232d00f00ffbb8788c001
42:fuel_epoch:010080808080108080801080808080080000000101010101010000000101000232d00f00ffbb8788c001
43:default:01008080808010808080108080808008000000000100010101010000000101000232d00f0000ffbb8788c001
43:fuel_epoch:01008080808010808080108080808008000000010101010101010000000101000232d00f0000ffbb8788c001
44:default:01008080808010808080108080808008000000000100010101010000000101000232d00f0000ffbb8788c001
45:default:010080808080108080801080808080080000000001000101010100000001010432d00f010000808080801080808010808080800801ffbb8788c001
45:fuel_epoch:010080808080108080801080808080080000000101010101010100000001010432d00f010000808080801080808010808080800801ffbb8788c001
45:winch:0080808080108080801080808080080000000001000101010100000101010432d00f010000808080801080808010808080800801ffb28780c001
46:default:010080808080108080801080808080080000000001000101010100000001010432d00f010000808080801080808010808080800801000100ffbb87c8c001
46:fuel_epoch:010080808080108080801080808080080000000101010101010100000001010432d00f010000808080801080808010808080800801000100ffbb87c8c001
46:winch:0080808080108080801080808080080000000001000101010100000101010432d00f010000808080801080808010808080800801000100ffb28780c001
47:default:01008080808010808080108080808008000001000001000101010100000001010432d00f01000080808080108080801080808080080001000100fffbafc8c001
47:fuel_epoch:01008080808010808080108080808008000001000101010101010100000001010432d00f01000080808080108080801080808080080001000100fffbafc8c001
47:winch:008080808010808080108080808008000001000001000101010100000101010432d00f01000080808080108080801080808080080001000100ffb28780c001
48:default:01008080808010808080108080808008000001000001000101010100000001010432d00f01000080808080108080801080808080080001000100fffbafc8c001
48:winch:008080808010808080108080808008000001000001000101010100000101010432d00f01000080808080108080801080808080080001000100ffb287c0c001
49:default:01008080808010808080108080808008000001000001000101010100000001010432d00f01000080808080108080801080808080080001000100fffbafe8c001
49:winch:01008080808010808080108080808008000001000001000101010100000101010432d00f01000080808080108080801080808080080001000100fff287e8c001
50:default:01008080808010808080108080808008000001000001000101010100000001010432d00f0100000080808080108080801080808080080001000100fffbafe8c001
50:fuel_epoch:01008080808010808080108080808008000001000101010101010100000001010432d00f0100000080808080108080801080808080080001000100fffbafe8c001
50:winch:008080808010808080108080808008000001000001000101010100000101010432d00f0100000080808080108080801080808080080001000100ffb087c0c001
"""
RECORDED_TAILS = [(int(v), k, t) for v, k, t in (line.split(":") for line in _RECORDED.split())]


@pytest.mark.parametrize(("version", "kind", "tail"), RECORDED_TAILS, ids=lambda v: str(v)[:12])
def test_recorded_layouts(version: int, kind: str, tail: str) -> None:
    info = decode_engine_section(_synthetic_section(str(version), bytes.fromhex(tail)))
    assert info.wasmtime_version == str(version)
    assert info.opt_level == "speed"
    assert info.isa_flags == {"has_avx2": True}
    assert info.shared_flags["probestack_size_log2"] == 12
    tunables = info.tunables
    assert tunables is not None
    assert info.features is not None
    assert info.compiler == ("winch" if kind == "winch" else "cranelift")
    assert tunables["consume_fuel"] is (kind == "fuel_epoch")
    assert tunables["epoch_interruption"] is (kind == "fuel_epoch")
    assert tunables["memory_reservation"] == 1 << 32
    assert tunables["memory_guard_size"] == 32 << 20
    assert tunables["inlining_small_callee_size"] == 50
    assert tunables["inlining_sum_size_threshold"] == 2000
    assert tunables["signals_based_traps"] is True
    # Winch has no GC support, so (except in 49) it disables the collector.
    winch_without_gc = kind == "winch" and version != 49
    assert tunables["collector"] == (None if winch_without_gc else "DeferredReferenceCounting")


def test_versions_cover_all_supported_wasmtime_releases() -> None:
    assert set(range(40, 51)) <= known_tunables_versions()
    assert {version for version, _, _ in RECORDED_TAILS} == set(range(40, 51))


def _tail(version: int, kind: str = "default") -> bytes:
    return next(bytes.fromhex(t) for v, k, t in RECORDED_TAILS if (v, k) == (version, kind))


def test_full_version_string_selects_the_layout() -> None:
    info = decode_engine_section(_synthetic_section("50.0.1", _tail(50)))
    assert info.tunables is not None
    assert info.compiler == "cranelift"


@pytest.mark.parametrize("version", ["", "custom-build", "39", "51", "999999999"])
def test_unknown_version_still_decodes_flags(version: str) -> None:
    info = decode_engine_section(_synthetic_section(version, b"\x07\x07\x07"))
    assert info.wasmtime_version == version
    assert info.opt_level == "speed"
    assert info.tunables is None
    assert info.features is None
    assert info.compiler == "unknown"


def test_unknown_version_without_any_metadata_after_flags_is_truncated() -> None:
    with pytest.raises(ValueError, match="truncated"):
        decode_engine_section(_synthetic_section("51", b""))


def test_v50_region_of_unknown_field_order_must_be_zero() -> None:
    tail = bytearray(_tail(50))
    # The three bytes after concurrency_support (`...d00f 01`) hold recording,
    # gc_zeal_alloc_counter and a field added in 50, in an order not known from source.
    region = tail.index(bytes.fromhex("d00f01")) + 3
    assert tail[region : region + 3] == b"\x00\x00\x00"
    tail[region] = 1
    info = decode_engine_section(_synthetic_section("50", bytes(tail)))
    assert info.tunables is None
    assert info.features is None
    assert info.compiler == "cranelift", "winch_callable precedes the ambiguous bytes"


def test_operator_cost_table_is_not_guessed() -> None:
    tail = bytearray(_tail(43, "fuel_epoch"))
    # collector (2 bytes) + three u64 varints (5 + 4 + 5) + debug_native, debug_guest,
    # parse_wasm_debuginfo, consume_fuel (4) put operator_cost at offset 20; variant 0 is Table.
    assert tail[20] == 1
    tail[20] = 0
    info = decode_engine_section(_synthetic_section("43", bytes(tail)))
    assert info.tunables is None
    assert info.compiler == "unknown"


# -- malformed input -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (b"\x01\x0250", "format version"),
        (b"\x00", "truncated"),
        (b"\x00\x05ab", "truncated"),
        (b"\x00\x02\xff\xfe\x00\x00\x00\x00", "UTF-8"),
        (b"\x00\x0250\x03\xff\xfe\xfd\x00\x00\x00", "UTF-8"),
        (b"\x00\x0250\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "longer than"),
        (b"\x00\x0250\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", "overflows"),
        (b"\x00\x0250\x80\x80\x80\x80\x80\x80\x80\x80\x80\x02", "overflows"),
        (b"\x00\x0250\x00\xff\xff\xff\xff\x0f", r"count .* exceeds"),
        (b"\x00\x0250\x00\x01\x01a\x05\x00\x00\x00", "unknown flag value tag"),
        (b"\x00\x0250\x00\x01\x01a\x02\x02\x00\x00", "invalid bool"),
        (b"\x00\x0250\x00\x02\x01a\x01\x00\x01a\x01\x00\x00\x00", "duplicate"),
        (b"\x00\x0250\x00\x01\x01a\x00\x09abc", "truncated"),
    ],
)
def test_malformed_sections_raise_value_error(data: bytes, message: str) -> None:
    with pytest.raises(EngineSectionError, match=message):
        decode_engine_section(data)


def test_invalid_tunables_values_raise() -> None:
    tail = bytearray(_tail(50))
    tail[0] = 2  # Option tag of `collector`
    with pytest.raises(ValueError, match="option tag"):
        decode_engine_section(_synthetic_section("50", bytes(tail)))
    tail = bytearray(_tail(50))
    tail[1] = 7  # Collector variant
    with pytest.raises(ValueError, match="unknown variant"):
        decode_engine_section(_synthetic_section("50", bytes(tail)))
    tail = bytearray(_tail(50))
    tail[16] = 2  # debug_native, after collector (2 bytes) and three u64 varints (14 bytes)
    with pytest.raises(ValueError, match="invalid bool"):
        decode_engine_section(_synthetic_section("50", bytes(tail)))


def test_non_bytes_input_raises_value_error() -> None:
    with pytest.raises(ValueError, match="bytes-like"):
        decode_engine_section("not bytes")  # type: ignore[arg-type]


def _decode_or_value_error(data: bytes) -> EngineInfo | None:
    """Decoding may succeed or raise ValueError; anything else escapes and fails the test."""
    try:
        return decode_engine_section(data)
    except ValueError:
        return None


_HYPOTHESIS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_HYPOTHESIS
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_value_error(data: bytes) -> None:
    _decode_or_value_error(data)


@_HYPOTHESIS
@given(st.binary(max_size=512))
def test_random_bytes_after_a_valid_header_only_raise_value_error(rest: bytes) -> None:
    for version in ("40", "43", "45", "50", "51"):
        _decode_or_value_error(b"\x00" + bytes([len(version)]) + version.encode() + rest)


@_HYPOTHESIS
@given(st.data())
def test_random_truncations_of_a_real_section_raise_value_error(data: st.DataObject) -> None:
    section = _default_section()
    cut = data.draw(st.integers(min_value=0, max_value=len(section) - 1))
    if decode_engine_section(section).tunables is None:
        _decode_or_value_error(section[:cut])
    else:
        with pytest.raises(ValueError, match="truncated"):
            decode_engine_section(section[:cut])


@_HYPOTHESIS
@given(st.data())
def test_random_corruptions_of_a_real_section_only_raise_value_error(data: st.DataObject) -> None:
    section = bytearray(_default_section())
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        index = data.draw(st.integers(min_value=0, max_value=len(section) - 1))
        section[index] = data.draw(st.integers(min_value=0, max_value=255))
    _decode_or_value_error(bytes(section))
