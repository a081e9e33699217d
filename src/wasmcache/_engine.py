"""Engines: a validated way to build one from settings, and the exact fingerprint of any engine.

wasmtime-py cannot read a `Config` back, so an engine is identified by what it writes: compile
a one-function module (code, so settings that cannot compile a function are caught here, not
blamed on the user's wasm later) and take the `.wasmtime.engine` section of its serialized form. That section
holds the wasmtime version, the target, every Cranelift shared and ISA flag (CPU features), the
tunables (fuel, epochs, Winch, ...) and the wasm features; hashing it keys an engine exactly.

Building an engine is dangerous in wasmtime-py: `wasm_engine_new_with_config` *aborts the whole
process* (a Rust panic) when wasmtime rejects a combination (Winch with GC, GC without
reference types, ...). So settings we have not seen before are tried once in a child process;
the verdict and the fingerprint are remembered inside an initialized cache root (ROOT/engines/),
keyed by the settings, the exact wasmtime library file, this boot and the WASMTIME_* environment
(wasmtime's default Config reads WASMTIME_BACKTRACE_DETAILS, which changes the engine), so later
processes neither fork nor probe. Nothing is remembered anywhere else.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

import blake3

from ._elf import ENGINE_SECTION, find_section
from ._errors import ConfigError
from ._native import compile_wasm

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    import wasmtime

log = logging.getLogger("wasmcache")

Compiler = Literal["auto", "cranelift", "winch"]
OptLevel = Literal["0", "1", "2", "s"]

# (module (func (result i32) i32.const 0)): the smallest module with code. Its engine section is
# the same as the empty module's; compiling a body is what fails for Winch + exceptions & co.
PROBE_MODULE: Final = (b"\0asm\x01\0\0\0"  # magic, version
                       b"\x01\x05\x01\x60\x00\x01\x7f"  # type section: [] -> [i32]
                       b"\x03\x02\x01\x00"  # function section
                       b"\x0a\x06\x01\x04\x00\x41\x00\x0b")

# wasmtime_config_strategy_set: 0 auto, 1 cranelift, 2 winch. Any other value panics in Engine().
_STRATEGIES: Final[dict[str, int]] = {"auto": 0, "cranelift": 1, "winch": 2}
# `wasmtime run -O opt-level=` spelling -> Config.cranelift_opt_level.
_OPT_LEVELS: Final[dict[str, str]] = {"0": "none", "1": "speed", "2": "speed", "s": "speed_and_size"}
# `wasmtime run -W name=` spelling of wasm proposals -> Config attribute suffix (`wasm_<suffix>`).
WASM_FEATURES: Final[tuple[str, ...]] = (
    "bulk-memory",
    "component-model",
    "custom-page-sizes",
    "exceptions",
    "function-references",
    "gc",
    "memory64",
    "multi-memory",
    "multi-value",
    "reference-types",
    "relaxed-simd",
    "simd",
    "stack-switching",
    "tail-call",
    "threads",
    "wide-arithmetic",
)
_BOOL_WORDS: Final[dict[str, bool]] = {"y": True, "yes": True, "true": True, "n": False, "no": False, "false": False}


def _parse_bool(option: str, name: str, value: str) -> bool:
    try:
        return _BOOL_WORDS[value.strip().lower()]
    except KeyError:
        raise ConfigError(f"{option} {name}={value}: expected y or n") from None


_FLAGS: Final = ("consume_fuel", "epoch_interruption", "nan_canonicalization", "debug_info")


class EngineSettings:
    """Engine settings in the vocabulary of `wasmtime run`, validated before they reach wasmtime.

    `features` maps a `-W` feature name (``"exceptions"``, ``"tail-call"``...) to on/off;
    `opt_level` uses `-O opt-level=` values (``"0"``, ``"1"``, ``"2"``, ``"s"``), None = wasmtime's default.
    Immutable and hashable. (A plain class, not a dataclass: `import dataclasses` alone costs every
    process that loads a module ~5 ms.)
    """

    __slots__ = ("compiler", "consume_fuel", "debug_info", "epoch_interruption", "features",
                 "nan_canonicalization", "opt_level")
    compiler: Compiler
    opt_level: OptLevel | None
    features: Mapping[str, bool]
    consume_fuel: bool
    epoch_interruption: bool
    nan_canonicalization: bool
    debug_info: bool

    def __init__(
        self,
        compiler: Compiler = "auto",
        opt_level: OptLevel | None = None,
        features: Mapping[str, bool] | None = None,
        consume_fuel: bool = False,
        epoch_interruption: bool = False,
        nan_canonicalization: bool = False,
        debug_info: bool = False,
    ) -> None:
        if compiler not in _STRATEGIES:
            raise ConfigError(f"compiler={compiler!r}: expected one of cranelift, winch, auto")
        if opt_level is not None and opt_level not in _OPT_LEVELS:
            raise ConfigError(f"opt-level={opt_level!r}: expected one of 0, 1, 2, s")
        features = {} if features is None else features
        if not hasattr(features, "items"):
            raise ConfigError(f"features: expected a mapping of feature name to True/False, got {features!r}")
        for name, enabled in features.items():
            if name not in WASM_FEATURES:
                raise ConfigError(f"unknown wasm feature {name!r}; known: {', '.join(WASM_FEATURES)}")
            if not isinstance(enabled, bool):
                raise ConfigError(f"wasm feature {name}: expected True or False, got {enabled!r}")
        flags = (consume_fuel, epoch_interruption, nan_canonicalization, debug_info)
        for flag, value in zip(_FLAGS, flags, strict=True):
            if not isinstance(value, bool):
                raise ConfigError(f"{flag}: expected True or False, got {value!r}")
        set_ = object.__setattr__
        set_(self, "compiler", compiler)
        set_(self, "opt_level", opt_level)
        set_(self, "features", dict(sorted(features.items())))  # stable order for hashing and JSON
        for flag, value in zip(_FLAGS, flags, strict=True):
            set_(self, flag, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"EngineSettings is immutable (cannot set {name})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EngineSettings) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.as_dict(), sort_keys=True))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"EngineSettings({fields})"

    @classmethod
    def from_options(
        cls,
        wasm: Iterable[str] = (),
        codegen: Iterable[str] = (),
        optimize: Iterable[str] = (),
    ) -> EngineSettings:
        """Parse `wasmtime run`-style `-W`, `-C` and `-O` option values (``"exceptions=y"``...)."""
        kwargs: dict[str, Any] = {}
        features: dict[str, bool] = {}
        for option, values in (("-W", wasm), ("-C", codegen), ("-O", optimize)):
            for raw in values:
                for item in raw.split(","):
                    name, sep, value = item.strip().partition("=")
                    name = name.strip().replace("_", "-")
                    value = value.strip() if sep else "y"
                    cls._apply_option(option, name, value, kwargs, features)
        return cls(features=features, **kwargs)

    @staticmethod
    def _apply_option(
        option: str, name: str, value: str, kwargs: dict[str, Any], features: dict[str, bool]
    ) -> None:
        if option == "-W":
            if name in WASM_FEATURES:
                features[name] = _parse_bool(option, name, value)
            elif name in ("epoch-interruption", "nan-canonicalization"):
                kwargs[name.replace("-", "_")] = _parse_bool(option, name, value)
            elif name == "fuel":
                # `-W fuel=N` in wasmtime run: the engine meters fuel; N is the store's budget.
                if not value.isdigit():
                    raise ConfigError(f"-W fuel={value}: expected a whole number of fuel units")
                kwargs["consume_fuel"] = True
            else:
                raise ConfigError(f"-W {name}: unknown option; known: fuel, epoch-interruption, "
                                  f"nan-canonicalization, {', '.join(WASM_FEATURES)}")
        elif option == "-C":
            if name == "compiler":
                kwargs["compiler"] = value
            elif name == "debug-info":
                kwargs["debug_info"] = _parse_bool(option, name, value)
            else:
                raise ConfigError(f"-C {name}: unknown option; known: compiler=cranelift|winch, debug-info=y|n")
        elif name == "opt-level":
            kwargs["opt_level"] = value
        else:
            raise ConfigError(f"-O {name}: unknown option; known: opt-level=0|1|2|s")

    def as_dict(self) -> dict[str, Any]:
        return {
            "compiler": self.compiler,
            "opt_level": self.opt_level,
            "features": dict(self.features),
            "consume_fuel": self.consume_fuel,
            "epoch_interruption": self.epoch_interruption,
            "nan_canonicalization": self.nan_canonicalization,
            "debug_info": self.debug_info,
        }

    def describe(self) -> str:
        parts = [f"compiler={self.compiler}"]
        if self.opt_level is not None:
            parts.append(f"opt-level={self.opt_level}")
        parts += [f"{name}={'y' if on else 'n'}" for name, on in self.features.items()]
        parts += [flag for flag in _FLAGS if getattr(self, flag)]
        return " ".join(parts)

    def config(self) -> wasmtime.Config:
        """A fresh `wasmtime.Config` with these settings. Not validated: prefer `build()`."""
        import wasmtime  # noqa: PLC0415 - keep `import wasmcache` from paying for wasmtime twice

        if self.compiler == "winch" and _wasmtime_major() < _FIRST_WINCH_RELEASE:
            # The C API's strategy enum has no Winch value before 45: 2 would be undefined behaviour.
            raise ConfigError(
                f"compiler=winch needs wasmtime >= {_FIRST_WINCH_RELEASE} (installed: {_wasmtime_version()})"
            )
        config = wasmtime.Config()
        for name, enabled in self.features.items():
            attribute = "wasm_" + name.replace("-", "_")
            if not hasattr(type(config), attribute):
                raise ConfigError(f"wasm feature {name} is not supported by wasmtime-py {_wasmtime_version()}")
            setattr(config, attribute, enabled)
        if self.opt_level is not None:
            config.cranelift_opt_level = _OPT_LEVELS[self.opt_level]
        if self.consume_fuel:
            config.consume_fuel = True
        if self.epoch_interruption:
            config.epoch_interruption = True
        if self.nan_canonicalization:
            # The C setter: wasmtime-py < 45 has no such property, and Config silently accepts any attribute.
            wasmtime._ffi.wasmtime_config_cranelift_nan_canonicalization_set(config.ptr(), True)  # noqa: SLF001, FBT003
        if self.debug_info:
            config.debug_info = True
        # wasmtime-py's `Config.strategy` knows only auto/cranelift, though Winch is compiled in;
        # the value was checked against _STRATEGIES in __post_init__ (others abort the process).
        wasmtime._ffi.wasmtime_config_strategy_set(config.ptr(), _STRATEGIES[self.compiler])  # noqa: SLF001
        return config

    def build(self, *, memo_dir: str | os.PathLike[str] | None = None) -> wasmtime.Engine:
        """Build the engine, after checking in a child process that wasmtime accepts these settings.

        A combination wasmtime would abort on, or one that cannot compile a function, raises
        `ConfigError` naming the settings. The verdict is remembered in this process, and across
        processes under `memo_dir` (a `ModuleCache` passes its root's); with no `memo_dir`, under
        the default cache root only if that root already exists and is writable. Nothing is
        written anywhere else, and nothing at all under `$WASMCACHE_DISABLE`.
        """
        if memo_dir is not None:
            memo: EngineMemo | None = EngineMemo(Path(memo_dir), writable=True)
        else:
            memo = EngineMemo.of_default_root()
        return self.build_with_memo(memo)

    def build_with_memo(self, memo: EngineMemo | None) -> wasmtime.Engine:
        import wasmtime  # noqa: PLC0415

        memo_key = self._memo_key()
        section = _validated.get(memo_key)
        if section is None and memo is not None:
            section = memo.read(memo_key)
        if section is None:
            section = self._validate_in_child()
            if memo is not None:
                memo.write(memo_key, self, section)
        _validated[memo_key] = section
        engine = wasmtime.Engine(self.config())
        _remember_fingerprint(engine, section)
        return engine

    def _memo_key(self) -> str:
        return _memo_key(self.describe())

    def _validate_in_child(self) -> bytes:
        import subprocess  # noqa: PLC0415 - only for settings never seen before

        package_parent = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
        env["RUST_BACKTRACE"] = "0"
        code = "from wasmcache._engine import _child_probe; _child_probe()"
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code, json.dumps(self.as_dict())],
                capture_output=True, text=True, timeout=120, env=env, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"could not check engine settings ({self.describe()}): {exc}") from exc
        if proc.returncode == 0:
            try:
                return bytes.fromhex(proc.stdout.strip())
            except ValueError:
                pass
        raise ConfigError(f"wasmtime rejects these engine settings ({self.describe()}): "
                          f"{_panic_message(proc.stderr) or f'exit code {proc.returncode}'}")


def _panic_message(stderr: str) -> str:
    """The reason from a Rust panic (or the last line of a Python error) in a child's stderr."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "panicked at" in line and i + 1 < len(lines):
            reason = lines[i + 1]
            return reason.split("`Err` value: ", 1)[-1]
    return lines[-1] if lines else ""


def _child_probe() -> None:
    """Run in a child process by `EngineSettings.build`: build the engine, print its section."""
    import wasmtime  # noqa: PLC0415

    raw = json.loads(sys.argv[1])
    try:
        settings = EngineSettings(**raw)
        section = engine_section(wasmtime.Engine(settings.config()))
    except (ConfigError, wasmtime.WasmtimeError) as exc:
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(3) from None
    sys.stdout.write(section.hex())


# --- remembered verdicts ------------------------------------------------------------------------

_validated: dict[str, bytes] = {}


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
        from ._fs import read_small_file  # noqa: PLC0415

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

    def write(self, memo_key: str, settings: EngineSettings | None, section: bytes) -> None:
        if not self.writable:
            return
        from ._fs import write_atomically  # noqa: PLC0415

        # key, section length, section; then the settings as JSON for people reading the file.
        described = json.dumps(settings.as_dict() if settings else "wasmtime.Engine()").encode()
        record = f"{memo_key} {len(section)}\n".encode() + section + b"\n" + described + b"\n"
        path = self.path(memo_key)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomically(path, record)
        except OSError as exc:
            log.debug("could not remember engine settings in %s: %s", path, exc)


def _memo_key(settings: str) -> str:
    """Settings (a complete, canonical description) + the wasmtime library file + this boot + WASMTIME_*."""
    identity = f"{settings}\0{_wasmtime_library_identity()}\0{host_identity()}\0{_wasmtime_environment()}"
    return blake3.blake3(identity.encode()).hexdigest()[:32]


def _wasmtime_environment() -> str:
    """The WASMTIME_* variables: wasmtime's default Config reads some (WASMTIME_BACKTRACE_DETAILS
    changes the engine section), so a fingerprint remembered without them could be another engine's."""
    return "\0".join(sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("WASMTIME_")))


_FIRST_WINCH_RELEASE: Final = 45


def _wasmtime_major() -> int:
    head = _wasmtime_version().split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def _wasmtime_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("wasmtime")
    except PackageNotFoundError:
        return "unknown"


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
_CPUINFO_LINES: Final = re.compile(rb"^(?:model name|flags|Features|CPU implementer|CPU part)\s*:.*$", re.MULTILINE)


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
            parts += [m.decode("utf-8", "replace") for m in _CPUINFO_LINES.findall(raw.split(b"\n\n", 1)[0])]
        except OSError:
            import platform  # noqa: PLC0415

            parts.append(platform.processor())
        _cpu_identity = blake3.blake3("\n".join(parts).encode()).hexdigest()[:32]
    return _cpu_identity


# --- fingerprints -------------------------------------------------------------------------------


class EngineIdentity(NamedTuple):
    """An engine's `.wasmtime.engine` section and its digest (the namespace name)."""

    section: bytes
    fingerprint: str


_identities: weakref.WeakKeyDictionary[wasmtime.Engine, EngineIdentity] = weakref.WeakKeyDictionary()
_identities_lock = threading.Lock()


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

        raise ConfigError(f"this engine cannot compile a function: {wasmtime_reason(exc)}") from None
    return find_section(serialized, ENGINE_SECTION)



def fingerprint_of_section(section: bytes) -> str:
    return blake3.blake3(b"wasmcache-engine-v1\0" + section).hexdigest()


def _remember_fingerprint(engine: wasmtime.Engine, section: bytes) -> EngineIdentity:
    identity = EngineIdentity(section, fingerprint_of_section(section))
    with _identities_lock:
        _identities[engine] = identity
    return identity


def default_engine(memo: EngineMemo | None) -> wasmtime.Engine:
    """`wasmtime.Engine()`, with its fingerprint remembered across processes in `memo`.

    The probe compile costs ~0.7 ms in a fresh process, as much as the whole mapped load; the
    default configuration cannot abort, so no child check is needed, only the memo.
    """
    import wasmtime  # noqa: PLC0415

    engine = wasmtime.Engine()
    memo_key = _memo_key("wasmtime.Engine()")
    section = _validated.get(memo_key)
    if section is None and memo is not None:
        section = memo.read(memo_key)
    if section is None:
        section = engine_section(engine)
        if memo is not None:
            memo.write(memo_key, None, section)
    _validated[memo_key] = section
    _remember_fingerprint(engine, section)
    return engine


def engine_identity(engine: wasmtime.Engine) -> EngineIdentity:
    """The exact identity of `engine` (one probe compile per engine per process, ~1 ms)."""
    with _identities_lock:
        known = _identities.get(engine)
    if known is not None:
        return known
    return _remember_fingerprint(engine, engine_section(engine))


def engine_fingerprint(engine: wasmtime.Engine) -> str:
    """A hex digest that differs for every engine configuration that changes compiled code."""
    return engine_identity(engine).fingerprint
