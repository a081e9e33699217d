"""_compat against real engine sections: the ABI identity ignores exactly the CPU level, nothing else."""

from __future__ import annotations

import wasmtime

from wasmcache._compat import abi_hash, abi_identity, isa_flags, loadable
from wasmcache._elf import ENGINE_SECTION, find_section
from wasmcache._engine import EngineSettings
from wasmcache._public._build import level_config
from wasmcache._public._levels import LEVELS

WAT = '(module (func (export "f") (result i32) i32.const 7))'


def section_of(config: wasmtime.Config) -> bytes:
    engine = wasmtime.Engine(config)
    return find_section(wasmtime.Module(engine, WAT).serialize(), ENGINE_SECTION)


def native() -> bytes:
    return section_of(wasmtime.Config())


def at_level(flags: tuple[str, ...], settings: EngineSettings | None = None) -> bytes:
    return section_of(level_config(settings, "x86_64-unknown-linux-gnu", flags))


def set_isa_flag(section: bytes, name: str) -> bytes:
    """`section` with ISA bool `name` set true (a forged artifact claiming a CPU feature)."""
    needle = bytes([len(name)]) + name.encode() + b"\x02"
    at = section.rindex(needle) + len(needle)
    return section[:at] + b"\x01" + section[at + 1:]


def host_lacks() -> str:
    """An ISA flag this host's engine reports false (there is always one: e.g. has_avx10_*, has_apx...)."""
    host = native()
    from wasmcache._engine_section import decode_engine_section

    false = sorted(n for n, v in decode_engine_section(host).isa_flags.items() if v is False)
    assert false, "this host reports every ISA flag true"
    return false[0]


def test_every_level_shares_the_native_abi_and_differs_only_in_isa_flags():
    host = native()
    for _name, flags in LEVELS["x86_64"]:
        if not set(flags) <= isa_flags(host):
            continue
        section = at_level(flags)
        assert abi_identity(section) == abi_identity(host)
        assert abi_hash(section) == abi_hash(host)
        assert isa_flags(section) == set(flags)
        assert loadable(section, host) is None
    # control: the sections themselves differ (the identity is not the trivially equal bytes)
    assert at_level(()) != host


def test_level_flags_equal_wasmtimes_presets():
    host = isa_flags(native())
    for preset, level in (("x86-64-v2", "x86-64-v2"), ("haswell", "x86-64-v3"), ("skylake-avx512", "x86-64-v4")):
        flags = dict(LEVELS["x86_64"])[level]
        if not set(flags) <= host:
            continue
        config = wasmtime.Config()
        config.target = "x86_64-unknown-linux-gnu"
        config.cranelift_flag_enable(preset)
        assert isa_flags(section_of(config)) == set(flags), preset


def test_other_engine_settings_are_refused_with_a_reason():
    host = native()
    fuel = at_level((), EngineSettings(consume_fuel=True))
    assert loadable(fuel, host) == "other engine settings"
    opt0 = at_level((), EngineSettings(opt_level="0"))
    assert loadable(opt0, host) == "other engine settings"
    assert abi_hash(fuel) != abi_hash(host)


def test_a_section_claiming_a_feature_the_host_lacks_is_refused():
    host = native()
    missing = host_lacks()
    forged = set_isa_flag(at_level(()), missing)
    assert missing in isa_flags(forged)
    assert abi_identity(forged) == abi_identity(host)  # same ABI: only the ISA check stops it
    assert loadable(forged, host) == f"needs CPU features this host lacks: {missing}"


def test_other_major_and_garbage():
    host = native()
    other = bytearray(host)
    version_len = other[1]
    other[2:2 + version_len] = b"9" * version_len  # "50" -> "99"
    assert loadable(bytes(other), host) == "other wasmtime major"
    assert loadable(b"\x00\x05garbage", host) == "malformed engine section"
    assert loadable(b"", host) == "malformed engine section"
