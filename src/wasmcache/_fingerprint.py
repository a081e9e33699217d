"""Engine fingerprints: the exact identity of any engine.

wasmtime-py cannot read a `Config` back, so an engine is identified by what it writes: compile
a one-function module and hash the `.wasmtime.engine` section of its serialized form (wasmtime
version, target, every Cranelift and CPU flag, tunables, wasm features). That costs ~0.7 ms in a
fresh process (as much as a whole mapped load), and checking settings in a child far more, so what
a probe found is remembered across processes: the memo, ROOT/engines/ of an initialized cache root,
keyed by the settings, the exact wasmtime library file, this boot and the WASMTIME_* environment
(wasmtime's default Config reads WASMTIME_BACKTRACE_DETAILS, which changes the engine). Nothing is
remembered anywhere else.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Final

import blake3

from ._errors import EngineCannotCompileError
from ._fs import read_small_file, write_atomically
from ._loaded import WeakKeyMap
from ._log import log
from ._native import compile_wasm

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

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


class EngineIdentity:
    """An engine's `.wasmtime.engine` section and its digest (the namespace name)."""

    __slots__ = ("fingerprint", "section")

    def __init__(self, section: bytes, fingerprint: str) -> None:
        self.section = section
        self.fingerprint = fingerprint


_identities = WeakKeyMap()  # wasmtime.Engine -> EngineIdentity


def engine_section(engine: wasmtime.Engine) -> bytes:
    """Compile and serialize the probe module with `engine` and return its engine section.

    An engine that cannot compile a function is a ConfigError: every load would fail, and the
    wasm would be blamed.
    """
    import wasmtime  # noqa: PLC0415

    try:
        serialized = bytes(compile_wasm("module", engine, PROBE_MODULE).serialize())
    except wasmtime.WasmtimeError as exc:
        from ._errors import wasmtime_reason  # noqa: PLC0415

        raise EngineCannotCompileError(f"this engine cannot compile a function: {wasmtime_reason(exc)}") from None
    from ._elf import ENGINE_SECTION, find_section  # noqa: PLC0415 - a probe only: a hit reads the memo

    return find_section(serialized, ENGINE_SECTION)



def fingerprint_of_section(section: bytes) -> str:
    return blake3.blake3(b"wasmcache-engine-v1\0" + section).hexdigest()


def remember_fingerprint(engine: wasmtime.Engine, section: bytes) -> EngineIdentity:
    identity = EngineIdentity(section, fingerprint_of_section(section))
    _identities.put(engine, identity)
    return identity


def default_engine(memo: EngineMemo | None) -> wasmtime.Engine:
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


def engine_identity(engine: wasmtime.Engine) -> EngineIdentity:
    """The exact identity of `engine` (one probe compile per engine per process, ~1 ms)."""
    known: EngineIdentity | None = _identities.get(engine)
    if known is not None:
        return known
    return remember_fingerprint(engine, engine_section(engine))


def engine_fingerprint(engine: wasmtime.Engine) -> str:
    """A hex digest that differs for every engine configuration that changes compiled code."""
    return engine_identity(engine).fingerprint


# --- the memo: engine sections and verdicts remembered across processes ---------------------------


_validated: dict[str, bytes] = {}
_in_memo: set[tuple[str, str]] = set()  # (memo directory, key) known to be on disk


def remembered_section(memo_key: str, memo: EngineMemo | None, described: object,
                       probe: Callable[[], bytes]) -> bytes:
    """The engine section for `memo_key`: from this process, else `memo`, else `probe()`.

    Whatever this process knows is also put into `memo` once (a root this process has not used
    yet gets its memo, so the next process there neither forks nor probes).
    """
    section = _validated.get(memo_key)
    if memo is None:
        if section is None:
            section = probe()
        _validated[memo_key] = section
        return section
    place = (str(memo.directory), memo_key)
    if place in _in_memo and section is not None:
        return section
    on_disk = memo.read(memo_key)
    if section is None:
        section = on_disk if on_disk is not None else probe()
    if on_disk != section:
        memo.write(memo_key, described, section)
    _validated[memo_key] = section
    _in_memo.add(place)
    return section


class EngineMemo:
    """Where verdicts and fingerprints are remembered: ROOT/engines/ of an initialized root.

    Read from any root that has one; written only where the root is writable.
    """

    def __init__(self, directory: Path, *, writable: bool) -> None:
        self.directory = directory
        self.writable = writable

    @classmethod
    def of_default_root(cls) -> EngineMemo | None:
        """The default root's memo, if that root already exists (nothing is created for it)."""
        from ._layout import ENGINES_DIR  # noqa: PLC0415
        from ._root import disabled_by_environment, has_marker, resolve_root  # noqa: PLC0415

        if disabled_by_environment():
            return None
        try:
            root = resolve_root(None)
        except Exception:  # a broken environment must not stop the engine from being built
            return None
        if not has_marker(root):
            return None
        return cls(root / ENGINES_DIR, writable=os.access(root, os.W_OK))

    def path(self, memo_key: str) -> Path:
        return self.directory / f"{memo_key}.engine"

    def read(self, memo_key: str) -> bytes | None:
        # Binary, read in one syscall: this runs in every fresh process (the JSON version cost 0.15 ms;
        # sections are ~1 KiB, and a 1 MiB read costs an mmap per process).
        raw = read_small_file(self.path(memo_key), 1 << 16)
        if raw is None:
            return None
        header, _, rest = raw.partition(b"\n")
        key, _, length = header.partition(b" ")
        if key != memo_key.encode() or not length.isdigit() or int(length) > len(rest):
            return None
        return rest[: int(length)]

    def write(self, memo_key: str, described: object, section: bytes) -> None:
        if not self.writable:
            return
        # key, section length, section; then the settings as JSON for people reading the file.
        import json  # noqa: PLC0415 - a miss's work: a hit only reads

        text = json.dumps(described).encode()
        record = f"{memo_key} {len(section)}\n".encode() + section + b"\n" + text + b"\n"
        path = self.path(memo_key)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomically(path, record)
        except OSError as exc:
            log.debug("could not remember engine settings in %s: %s", path, exc)


def memo_key_for(settings: str) -> str:
    """Settings (a complete, canonical description) + the wasmtime library file + this boot + WASMTIME_*."""
    identity = f"{settings}\0{_wasmtime_library_identity()}\0{host_identity()}\0{_wasmtime_environment()}"
    return blake3.blake3(identity.encode()).hexdigest()[:32]


def _wasmtime_environment() -> str:
    """The WASMTIME_* variables: wasmtime's default Config reads some (WASMTIME_BACKTRACE_DETAILS
    changes the engine section), so a fingerprint remembered without them could be another engine's.

    Every fresh process does this: os.environ's own iteration runs in Python, a step per variable;
    its underlying bytes mapping (CPython's `_data`) is scanned at C speed when it is there.
    """
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict):
        found = sorted(k for k in data if k.startswith(b"WASMTIME_"))
        return "\0".join(f"{os.fsdecode(k)}={os.fsdecode(data[k])}" for k in found)
    return "\0".join(sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("WASMTIME_")))


_library_identity: str | None = None


def _wasmtime_library_identity() -> str:
    """The exact wasmtime build in use: the shared library's path, size and mtime."""
    global _library_identity  # noqa: PLW0603 - computed once per process
    if _library_identity is None:
        import wasmtime._ffi  # noqa: PLC0415

        library = getattr(getattr(wasmtime._ffi, "dll", None), "_name", None)  # noqa: SLF001
        try:
            st = os.stat(library) if library else None
        except OSError:
            st = None
        # No importlib.metadata here: importing it costs ~25 ms, and the library file names the build.
        _library_identity = f"{library}:{st.st_size}:{st.st_mtime_ns}" if st else "unknown"
    return _library_identity


_cpu_identity: str | None = None
_CPUINFO_LINES: Final = rb"(?m)^(?:model name|flags|Features|CPU implementer|CPU part)\s*:.*$"  # compiled when used


def host_identity() -> str:
    """This boot of this machine (Linux's boot_id), else the CPU's identity.

    Fingerprints depend on the CPU's features, which cannot change without a reboot, so a memo
    keyed by the boot is as exact as one keyed by /proc/cpuinfo, and reading boot_id costs a
    fraction of parsing cpuinfo on every fresh process. (Should a live migration ever move a VM
    to a CPU with fewer features, wasmtime's own compatibility check refuses the entries and they
    are recompiled.)
    """
    try:
        fd = os.open("/proc/sys/kernel/random/boot_id", os.O_RDONLY)
    except OSError:
        return cpu_identity()
    try:
        boot = os.read(fd, 64).strip()
    except OSError:
        return cpu_identity()
    finally:
        os.close(fd)
    return "boot:" + boot.decode("ascii", "replace") + ":" + os.uname().nodename


def cpu_identity() -> str:
    """The host CPU's model and feature flags (CPU features are part of the fingerprint)."""
    global _cpu_identity  # noqa: PLW0603 - computed once per process
    if _cpu_identity is None:
        uname = os.uname()
        parts = [uname.machine, uname.sysname]
        try:
            # One raw read; keep the stable lines of the first processor (not its MHz, which varies).
            fd = os.open("/proc/cpuinfo", os.O_RDONLY)
            try:
                raw = os.read(fd, 16384)
            finally:
                os.close(fd)
            parts += [m.decode("utf-8", "replace") for m in re.findall(_CPUINFO_LINES, raw.split(b"\n\n", 1)[0])]
        except OSError:
            import platform  # noqa: PLC0415

            parts.append(platform.processor())
        _cpu_identity = blake3.blake3("\n".join(parts).encode()).hexdigest()[:32]
    return _cpu_identity
