"""Engine fingerprints: the exact identity of any engine.

wasmtime-py cannot read a `Config` back, so an engine is identified by what it writes: compile
a one-function module and hash the `.wasmtime.engine` section of its serialized form (wasmtime
version, target, every Cranelift and CPU flag, tunables, wasm features). That costs ~0.7 ms in a
fresh process, so the default engine's section is remembered across processes (`_engine_memo`).
"""

# No `from __future__ import annotations`: typing.NamedTuple makes each string annotation a ForwardRef
# and compiles it (~0.15 ms a class in every process that loads a module: issue 14, item 7).
from typing import TYPE_CHECKING, Final, NamedTuple

import blake3

from ._elf import ENGINE_SECTION, find_section
from ._engine_memo import EngineMemo, memo_key_for, remembered_section
from ._errors import ConfigError
from ._native import compile_wasm
from ._weak import WeakKeyMap

if TYPE_CHECKING:

    import wasmtime


# (module (func (result i32) i32.const 0)): the smallest module with code. Its engine section is
# the same as the empty module's; compiling a body is what fails for Winch + exceptions & co.
PROBE_MODULE: Final = (b"\0asm\x01\0\0\0"  # magic, version
                       b"\x01\x05\x01\x60\x00\x01\x7f"  # type section: [] -> [i32]
                       b"\x03\x02\x01\x00"  # function section
                       b"\x0a\x06\x01\x04\x00\x41\x00\x0b")


FIRST_WINCH_RELEASE: Final = 45


def wasmtime_major() -> int:
    head = wasmtime_version().split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def wasmtime_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("wasmtime")
    except PackageNotFoundError:
        return "unknown"


# --- fingerprints -------------------------------------------------------------------------------


class EngineIdentity(NamedTuple):
    """An engine's `.wasmtime.engine` section and its digest (the namespace name)."""

    section: bytes
    fingerprint: str


_identities = WeakKeyMap()  # wasmtime.Engine -> EngineIdentity


def engine_section(engine: "wasmtime.Engine") -> bytes:
    """Compile and serialize the probe module with `engine` and return its engine section.

    An engine that cannot compile a function is a ConfigError: every load would fail, and the
    wasm would be blamed.
    """
    import wasmtime  # noqa: PLC0415

    try:
        serialized = bytes(compile_wasm("module", engine, PROBE_MODULE).serialize())
    except wasmtime.WasmtimeError as exc:
        from ._errors import wasmtime_reason  # noqa: PLC0415

        raise ConfigError(f"this engine cannot compile a function: {wasmtime_reason(exc)}") from None
    return find_section(serialized, ENGINE_SECTION)



def fingerprint_of_section(section: bytes) -> str:
    return blake3.blake3(b"wasmcache-engine-v1\0" + section).hexdigest()


def remember_fingerprint(engine: "wasmtime.Engine", section: bytes) -> EngineIdentity:
    identity = EngineIdentity(section, fingerprint_of_section(section))
    _identities.put(engine, identity)
    return identity


def default_engine(memo: EngineMemo | None) -> "wasmtime.Engine":
    """`wasmtime.Engine()`, with its fingerprint remembered across processes in `memo`.

    The probe compile costs ~0.7 ms in a fresh process, as much as the whole mapped load; the
    default configuration cannot abort, so no child check is needed, only the memo.
    """
    import wasmtime  # noqa: PLC0415

    engine = wasmtime.Engine()
    described = "wasmtime.Engine()"
    section = remembered_section(memo_key_for(described), memo, described, lambda: engine_section(engine))
    remember_fingerprint(engine, section)
    return engine


def engine_identity(engine: "wasmtime.Engine") -> EngineIdentity:
    """The exact identity of `engine` (one probe compile per engine per process, ~1 ms)."""
    known: EngineIdentity | None = _identities.get(engine)
    if known is not None:
        return known
    return remember_fingerprint(engine, engine_section(engine))


def engine_fingerprint(engine: "wasmtime.Engine") -> str:
    """A hex digest that differs for every engine configuration that changes compiled code."""
    return engine_identity(engine).fingerprint
