"""`EngineSettings`: engines built from `wasmtime run`-style settings, validated before wasmtime sees them.

Building an engine is dangerous in wasmtime-py: `wasm_engine_new_with_config` *aborts the whole
process* (a Rust panic) when wasmtime rejects a combination (Winch with GC, GC without
reference types, ...). So settings not seen before are tried once in a child process, which
also compiles a function with them (Winch with exceptions builds, then cannot compile code);
the verdict and the fingerprint are remembered (see `_core.remembered_section`), so later processes
neither fork nor probe.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from ._core import (
    FIRST_WINCH_RELEASE,
    EngineMemo,
    engine_section,
    memo_key_for,
    remember_fingerprint,
    remembered_section,
    wasmtime_major,
    wasmtime_version,
)
from ._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    import wasmtime


Compiler = Literal["auto", "cranelift", "winch"]
OptLevel = Literal["0", "1", "2", "s"]


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
        if isinstance(opt_level, int) and not isinstance(opt_level, bool):
            opt_level = str(opt_level)  # 2 means "2", as -O opt-level=2 does
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
        settings = self.as_dict()
        settings["features"] = sorted(settings["features"].items())  # as __eq__: order-blind
        return hash(repr(sorted(settings.items())))

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

    @classmethod
    def from_command_line(cls, wasm: Iterable[str] = (), codegen: Iterable[str] = (),
                          optimize: Iterable[str] = ()) -> EngineSettings | None:
        """`from_options` for a command (`run`, `compile`, `push` ...): None when the options ask for
        nothing but wasmtime's default engine (whose fingerprint is remembered per root)."""
        settings = cls.from_options(wasm, codegen, optimize)
        return None if settings == cls() else settings

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

        if self.compiler == "winch" and wasmtime_major() < FIRST_WINCH_RELEASE:
            # The C API's strategy enum has no Winch value before 45: 2 would be undefined behaviour.
            raise ConfigError(
                f"compiler=winch needs wasmtime >= {FIRST_WINCH_RELEASE} (installed: {wasmtime_version()})"
            )
        config = wasmtime.Config()
        for name, enabled in self.features.items():
            attribute = "wasm_" + name.replace("-", "_")
            if not hasattr(type(config), attribute):
                raise ConfigError(f"wasm feature {name} is not supported by wasmtime-py {wasmtime_version()}")
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
        section = remembered_section(memo_key, memo, self.as_dict(), self._validate_in_child)
        engine = wasmtime.Engine(self.config())
        remember_fingerprint(engine, section)
        return engine

    def _memo_key(self) -> str:
        return memo_key_for(self.describe())

    def _validate_in_child(self) -> bytes:
        import json  # noqa: PLC0415 - only for settings never seen before (a loading process has no use for json)
        import subprocess  # noqa: PLC0415

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
                          f"{panic_message(proc.stderr) or f'exit code {proc.returncode}'}")


def panic_message(stderr: str) -> str:
    """The reason from a Rust panic (or the last line of a Python error) in a child's stderr."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "panicked at" in line and i + 1 < len(lines):
            reason = lines[i + 1]
            return reason.split("`Err` value: ", 1)[-1]
    return lines[-1] if lines else ""


def _child_probe() -> None:
    """Run in a child process by `EngineSettings.build`: build the engine, print its section."""
    import json  # noqa: PLC0415

    import wasmtime  # noqa: PLC0415

    raw = json.loads(sys.argv[1])
    try:
        settings = EngineSettings(**raw)
        section = engine_section(wasmtime.Engine(settings.config()))
    except (ConfigError, wasmtime.WasmtimeError) as exc:
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(3) from None
    sys.stdout.write(section.hex())
