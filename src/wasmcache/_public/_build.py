"""Compiling a module or component once per CPU level, for `wasmcache publish`: each level is a fixed set
of Cranelift ISA flags (`_levels`), probed in a child first (a wrong flag aborts the process), and each
artifact is checked, compressed and described (`target_custom`) for the signed metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import blake3

from .._compat import abi_hash, isa_flags
from .._core import wasm_digest, wasm_kind
from .._elf import ENGINE_SECTION, find_section
from .._errors import ConfigError
from ._levels import levels_for, target_path

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._engine import EngineSettings

_ZSTD_LEVEL: Final = 9


class Built(NamedTuple):
    """One compiled, compressed artifact ready to be put in a tree."""

    path: str  # the TUF target path
    data: bytes  # the zstd-compressed artifact
    custom: dict[str, Any]


def target_custom(*, kind: str, digest: str, section: bytes, level: str, wasmtime_version: str, artifact: bytes,
                  compressed: bytes, name: str, settings: str, seconds: float) -> dict[str, Any]:
    """What a consumer reads before downloading (TUF's own length/hashes cover the compressed file)."""
    from .._engine_section import decode_engine_section  # noqa: PLC0415

    info = decode_engine_section(section)
    return {
        "kind": kind,
        "wasm": digest,  # wasmcache's `wasm_digest` of the input
        "abi": abi_hash(section),
        "isa": sorted(isa_flags(section)),
        "level": level,
        "target": info.target,
        "wasmtime": wasmtime_version,
        "engine_major": info.wasmtime_version,
        "settings": settings,
        "size": len(artifact),
        "blake3": blake3.blake3(artifact).hexdigest(),
        "compressed_size": len(compressed),
        "compressed_blake3": blake3.blake3(compressed).hexdigest(),
        "name": name,
        "compile_ms": round(seconds * 1000),  # canonical JSON has no floats
    }


# --- compiling at levels ------------------------------------------------------------------------------


def level_config(settings: EngineSettings | None, triple: str, flags: Sequence[str]) -> Any:
    """A `wasmtime.Config` for `settings` that compiles for `triple` with exactly `flags` (no native detection).

    wasmtime-py >= 45 has `Config.target` and `cranelift_flag_enable`; older ones reach the C API. An
    unknown flag or a foreign triple aborts the process: run this in a child first (`probe_levels`).
    """
    import ctypes  # noqa: PLC0415

    import wasmtime  # noqa: PLC0415

    from .._engine import EngineSettings  # noqa: PLC0415

    config = (settings or EngineSettings()).config()
    ffi = wasmtime._ffi  # noqa: SLF001
    if hasattr(type(config), "target"):
        config.target = triple
    else:
        error = ffi.wasmtime_config_target_set(config.ptr(), ctypes.c_char_p(triple.encode()))
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)  # noqa: SLF001
    for flag in flags:
        ffi.wasmtime_config_cranelift_flag_enable(config.ptr(), ctypes.c_char_p(flag.encode()))
    return config


def _child_level_probe() -> None:
    """In a child (see `probe_levels`): build the level's engine, compile a function, print its section."""
    import wasmtime  # noqa: PLC0415

    from .._core import engine_section  # noqa: PLC0415
    from .._engine import EngineSettings  # noqa: PLC0415

    raw = json.loads(sys.argv[1])
    settings = EngineSettings(**raw["settings"])
    try:
        engine = wasmtime.Engine(level_config(settings, raw["triple"], raw["flags"]))
        sys.stdout.write(engine_section(engine).hex())
    except (ConfigError, wasmtime.WasmtimeError) as exc:
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(3) from None


def probe_levels(settings: EngineSettings | None, triple: str,
                 levels: Sequence[tuple[str, tuple[str, ...]]]) -> dict[str, bytes | str]:
    """level -> the engine section it compiles with, or why it cannot be compiled here (each in a child)."""

    from .._engine import EngineSettings, panic_message  # noqa: PLC0415

    package_parent = str(Path(__file__).resolve().parent.parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    env["RUST_BACKTRACE"] = "0"
    code = "from wasmcache._public._build import _child_level_probe; _child_level_probe()"
    described = (settings or EngineSettings()).as_dict()
    children = {
        name: subprocess.Popen(
            [sys.executable, "-c", code, json.dumps({"settings": described, "triple": triple, "flags": flags})],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for name, flags in levels
    }
    verdicts: dict[str, bytes | str] = {}
    for name, child in children.items():
        out, err = child.communicate(timeout=120)
        try:
            verdicts[name] = bytes.fromhex(out.strip()) if child.returncode == 0 and out.strip() else ""
        except ValueError:
            verdicts[name] = ""
        if not verdicts[name]:
            verdicts[name] = panic_message(err) or f"exit code {child.returncode}"
    return verdicts


def host_section(settings: EngineSettings | None) -> bytes:
    """This runner's native engine section for `settings` (its true ISA flags are this CPU's)."""
    from .._core import engine_identity  # noqa: PLC0415
    from .._engine import EngineSettings  # noqa: PLC0415

    engine = (settings or EngineSettings()).build()
    return engine_identity(engine).section


def compile_at_levels(wasm_file: str, settings: EngineSettings | None, levels: Sequence[str] | None,
                      on_progress: Any = None) -> list[Built]:
    """Compile `wasm_file` once per CPU level (default: every level this runner can compile)."""
    import wasmtime  # noqa: PLC0415

    from .._core import compile_wasm, read_input, wasmtime_version  # noqa: PLC0415
    from .._engine import EngineSettings  # noqa: PLC0415
    from .._engine_section import decode_engine_section  # noqa: PLC0415

    native = host_section(settings)
    triple = decode_engine_section(native).target
    host_flags = isa_flags(native)
    known = levels_for(triple)
    if levels is None:
        wanted = [(name, flags) for name, flags in known if set(flags) <= host_flags]
    else:
        by_name = dict(known)
        unknown = [name for name in levels if name not in by_name]
        if unknown:
            raise ConfigError(f"--level {','.join(unknown)}: unknown for {triple}; known: "
                              f"{', '.join(name for name, _ in known)}")
        wanted = [(name, by_name[name]) for name in levels]
        for name, flags in wanted:
            lacking = sorted(set(flags) - host_flags)
            if lacking:
                raise ConfigError(f"--level {name}: this runner cannot compile it (its CPU lacks "
                                  f"{' '.join(lacking)}); publish that level from a runner that has them")
    verdicts = probe_levels(settings, triple, wanted)
    data, _ = read_input(wasm_file, wasm_file)
    kind = wasm_kind(data[:8])
    digest = wasm_digest(data)
    name = os.path.basename(wasm_file)
    described = (settings or EngineSettings()).describe()
    built: list[Built] = []
    for level, _flags in wanted:
        verdict = verdicts[level]
        if isinstance(verdict, str):
            raise ConfigError(f"level {level}: wasmtime cannot compile for it on this runner: {verdict}")
        if on_progress is not None:
            on_progress(f"compiling {name} for {level}")
        engine = wasmtime.Engine(level_config(settings, triple, _flags))
        started = time.perf_counter()
        try:
            artifact = bytes(compile_wasm(kind, engine, data).serialize())
        except wasmtime.WasmtimeError as exc:
            from .._errors import wasmtime_reason  # noqa: PLC0415

            raise ConfigError(f"{wasm_file}: cannot compile: {wasmtime_reason(exc)}") from None
        seconds = time.perf_counter() - started
        section = find_section(artifact, ENGINE_SECTION)
        if section != verdict or abi_hash(section) != abi_hash(native):
            raise ConfigError(f"level {level}: the compiled artifact's engine differs from the probed one")
        import zstandard  # noqa: PLC0415

        compressed = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, threads=-1).compress(artifact)
        custom = target_custom(kind=kind, digest=digest, section=section, level=level,
                               wasmtime_version=wasmtime_version(), artifact=artifact, compressed=compressed,
                               name=name, settings=described, seconds=seconds)
        built.append(Built(target_path(kind, digest, custom["abi"], level), compressed, custom))
    return built


# --- the tree -----------------------------------------------------------------------------------------
