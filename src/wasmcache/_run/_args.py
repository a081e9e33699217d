"""The command line of `wasmcache run`, read the way `wasmtime run` (clap) reads it.

Options come before the WASM file; every word after it goes to the guest (or to `--invoke`'s
function), `--` included. `--` before the file ends the options. Values attach as `--dir X`,
`--dir=X`, `-W X`, `-WX` or `-W=X`. `-W`/`-C`/`-O`/`-S` take comma-separated `key[=value]`
lists as in wasmtime; the keys that configure the store or the run (timeout, fuel budget,
limits, WASI) are taken out here, the rest is for `EngineSettings.from_options`.
"""

from __future__ import annotations

from typing import Final

from ._outcome import RunUsageError


class Options:
    """Everything `wasmcache run` was asked to do. (A plain class: `dataclasses` costs ~5 ms to import.)"""

    __slots__ = (
        "argv0", "cache", "cache_dir", "codegen", "dirs", "envs", "epoch_interruption", "file", "fuel",
        "guest_args", "help", "http", "inherit_env", "inherit_stderr", "inherit_stdin", "inherit_stdout",
        "invoke", "limits", "memory", "optimize", "preloads", "remote", "signing_key", "substituter_roots",
        "substituters", "timeout", "timeout_text", "trusted_keys", "unknown_imports_default", "unknown_imports_trap",
        "wasi", "wasm",
    )

    def __init__(self) -> None:
        self.file: str | None = None
        self.guest_args: list[str] = []
        self.dirs: list[tuple[str, str]] = []
        self.envs: list[tuple[str, str | None]] = []
        self.invoke: str | None = None
        self.argv0: str | None = None
        self.preloads: list[tuple[str, str]] = []
        self.wasm: list[str] = []       # -W items for EngineSettings (runtime-only ones removed)
        self.codegen: list[str] = []    # -C items for EngineSettings (`cache` removed)
        self.optimize: list[str] = []   # -O items for EngineSettings
        self.timeout: float | None = None
        self.timeout_text = ""
        self.fuel: int | None = None
        self.epoch_interruption = False
        self.limits: dict[str, int] = {}
        self.unknown_imports_trap = False
        self.unknown_imports_default = False
        self.wasi = True                # -S cli
        self.http = False               # -S http (components)
        self.inherit_env = False
        self.inherit_stdin = self.inherit_stdout = self.inherit_stderr = True
        self.cache = True               # -C cache=n: compile without the cache
        self.memory = False
        self.cache_dir: str | None = None
        self.remote: str | None = None
        self.signing_key: str | None = None
        self.trusted_keys: list[str] = []
        self.substituters: list[str] = []
        self.substituter_roots: list[str] = []
        self.help = False


# option -> attribute collecting its values; short spellings map to their long names
_VALUED: Final = {
    "--dir": "dirs", "--env": "envs", "--invoke": "invoke", "--argv0": "argv0", "--preload": "preloads",
    "--wasm": "wasm", "--codegen": "codegen", "--optimize": "optimize", "--wasi": "wasi",
    "--cache-dir": "cache_dir", "--remote": "remote", "--signing-key": "signing_key",
    "--trusted-key": "trusted_keys", "--substituter": "substituters", "--substituter-root": "substituter_roots",
}
_SHORT: Final = {"-W": "--wasm", "-C": "--codegen", "-O": "--optimize", "-S": "--wasi", "-h": "--help"}
_FLAGS: Final = {"--memory", "--help"}
# wasmtime run options wasmcache run does not implement: named in the refusal, not "unknown".
_UNSUPPORTED_VALUED: Final = {"-D": "--debug", "-R": "--record", "-g": "--gdbstub", "--target": "--target",
                              "--config": "--config", "--profile": "--profile"}
_UNSUPPORTED_FLAGS: Final = {"--allow-precompiled"}
_UNSUPPORTED_REASON: Final = {
    "--allow-precompiled": "wasmcache runs .wasm files through its checked cache, never a .cwasm given to it",
    "--debug": "wasmtime's -D debug options are not supported (wasmcache's own diagnostics: wasmcache --debug run)",
}

_BOOLS: Final = {"y": True, "yes": True, "true": True, "n": False, "no": False, "false": False}
_LIMITS: Final = {"max-memory-size": "memory_size", "max-table-elements": "table_elements",
                  "max-instances": "instances", "max-tables": "tables", "max-memories": "memories"}
# -W options of wasmtime 49 that neither EngineSettings nor this runner implements.
_W_UNSUPPORTED: Final = frozenset({
    "max-wasm-stack", "async-stack-size", "async-stack-zeroing", "unknown-exports-allow", "wmemcheck",
    "trap-on-grow-failure", "all-proposals", "relaxed-simd-deterministic", "shared-memory",
    "shared-everything-threads", "component-model-async", "component-model-more-async-builtins",
    "component-model-async-stackful", "component-model-threading", "component-model-error-context",
    "component-model-gc", "component-model-map", "component-model-memory64", "branch-hinting", "extended-const",
    "gc-support", "component-model-fixed-length-lists", "component-model-implements", "concurrency-support",
})
_S_UNSUPPORTED: Final = frozenset({
    "cli-exit-with-code", "nn", "threads", "http-outgoing-body-buffer-chunks", "http-outgoing-body-chunk-size",
    "config", "keyvalue", "listenfd", "tcplisten", "tls", "nn-graph", "inherit-network", "allow-ip-name-lookup",
    "tcp", "udp", "network-error-code", "cwd", "config-var", "keyvalue-in-memory-data", "p3", "max-resources",
    "hostcall-fuel", "max-component-handles", "max-random-size", "max-http-fields-size",
})


def parse(argv: list[str]) -> Options:
    options = Options()
    raw: dict[str, list[str]] = {}
    words = iter(argv)
    for word in words:
        if word == "--":
            file = next(words, None)
            if file is None:
                raise RunUsageError("run: missing the WASM file after `--`")
            options.file = file
            break
        if not word.startswith("-") or word == "-":
            options.file = word
            break
        name, value = _split_option(word)
        if name in _FLAGS:
            if value is not None:
                raise RunUsageError(f"run: {name} takes no value")
            setattr(options, name[2:], True)
            continue
        if name in _UNSUPPORTED_FLAGS or name in _UNSUPPORTED_VALUED.values():
            reason = _UNSUPPORTED_REASON.get(name, "not supported by wasmcache run (use wasmtime run)")
            raise RunUsageError(f"run: {name}: {reason}")
        if name not in _VALUED:
            raise RunUsageError(f"run: unknown option {word.split('=', 1)[0]!r} (see wasmcache run --help)")
        if value is None:
            value = next(words, None)
            if value is None:
                raise RunUsageError(f"run: {name} needs a value")
        raw.setdefault(_VALUED[name], []).append(value)
    options.guest_args = list(words)
    _apply(options, raw)
    if options.file is None and not options.help:
        raise RunUsageError("run: missing the WASM file to run (wasmcache run [OPTIONS] FILE [ARGS...])")
    if options.cache_dir == "":  # `--cache-dir "$UNSET"`: refused as every other command refuses it
        raise RunUsageError("run: --cache-dir: an empty path (an unset variable?)")
    return options


def _split_option(word: str) -> tuple[str, str | None]:
    """("--dir", "x") for "--dir=x"; ("--wasm", "x") for "-Wx" or "-W=x"; (name, None) without a value."""
    if word.startswith("--"):
        name, sep, value = word.partition("=")
        return name, (value if sep else None)
    short, rest = word[:2], word[2:]
    name = _SHORT.get(short) or _UNSUPPORTED_VALUED.get(short) or short
    if not rest:
        return name, None
    return name, rest.removeprefix("=")


def _apply(options: Options, raw: dict[str, list[str]]) -> None:
    for value in raw.get("dirs", []):
        host, _, rest = value.partition("::")
        options.dirs.append((host, rest.split("::", 1)[0] if "::" in value else host))
    for value in raw.get("envs", []):
        name, sep, val = value.partition("=")
        options.envs.append((name, val if sep else None))
    for attribute in ("invoke", "argv0", "cache_dir", "remote", "signing_key"):
        if attribute in raw:
            setattr(options, attribute, raw[attribute][-1])  # clap keeps the last of a repeated option
    options.trusted_keys = raw.get("trusted_keys", [])
    options.substituters = raw.get("substituters", [])
    options.substituter_roots = raw.get("substituter_roots", [])
    for value in raw.get("preloads", []):
        name, sep, path = value.partition("=")
        if not sep:
            raise RunUsageError(f"run: --preload {value}: must contain exactly one equals character ('=')")
        options.preloads.append((name, path))
    for key, item_value in _items("-W", raw.get("wasm", [])):
        _wasm_option(options, key, item_value)
    for key, item_value in _items("-C", raw.get("codegen", [])):
        if key == "cache":
            options.cache = _bool("-C", key, item_value)
        elif key == "cache-config":
            raise RunUsageError("run: -C cache-config: not supported (wasmcache is the cache; see --cache-dir)")
        else:
            options.codegen.append(_item(key, item_value))
    options.optimize = [_item(key, item_value) for key, item_value in _items("-O", raw.get("optimize", []))]
    for key, item_value in _items("-S", raw.get("wasi", [])):
        _wasi_option(options, key, item_value)


def _items(option: str, values: list[str]) -> list[tuple[str, str | None]]:
    items = []
    for raw in values:
        if raw == "help":
            raise RunUsageError(f"run: {option} help: see `wasmtime run {option} help`; wasmcache run --help lists "
                             "what it supports")
        for item in raw.split(","):
            key, sep, value = item.partition("=")
            items.append((key.strip().replace("_", "-"), value if sep else None))
    return items


def _item(key: str, value: str | None) -> str:
    return key if value is None else f"{key}={value}"


def _wasm_option(options: Options, key: str, value: str | None) -> None:
    if key == "timeout":
        options.timeout = parse_duration(value)
        options.timeout_text = value or ""
        options.epoch_interruption = True
        options.wasm.append("epoch-interruption=y")
    elif key == "fuel":
        options.fuel = _number("-W", key, value)
        options.wasm.append(f"fuel={options.fuel}")
    elif key in _LIMITS:
        options.limits[_LIMITS[key]] = _number("-W", key, value)
    elif key == "unknown-imports-trap":
        options.unknown_imports_trap = _bool("-W", key, value)
    elif key == "unknown-imports-default":
        options.unknown_imports_default = _bool("-W", key, value)
    elif key in _W_UNSUPPORTED:
        raise RunUsageError(f"run: -W {key}: a wasmtime option wasmcache run does not support")
    else:
        if key == "epoch-interruption":
            options.epoch_interruption = _bool("-W", key, value)
        options.wasm.append(_item(key, value))


def _wasi_option(options: Options, key: str, value: str | None) -> None:
    if key in ("inherit-env", "inherit-stdin", "inherit-stdout", "inherit-stderr", "http"):
        setattr(options, key.replace("-", "_"), _bool("-S", key, value))
    elif key in ("cli", "common"):
        options.wasi = _bool("-S", key, value)
    elif key == "preview2":
        if not _bool("-S", key, value):
            raise RunUsageError("run: -S preview2=n: the `-Spreview2=n` flag is no longer supported (nor by wasmtime)")
    elif key == "preview0":
        _bool("-S", key, value)  # accepted; wasmtime-py links WASI preview 1 only (no `wasi_unstable`)
    elif key in _S_UNSUPPORTED:
        raise RunUsageError(f"run: -S {key}: a wasmtime option wasmcache run does not support")
    else:
        raise RunUsageError(f"run: -S {key}: unknown option; known: cli, inherit-env, inherit-stdin, inherit-stdout, "
                         "inherit-stderr, http, preview2")


def _bool(option: str, key: str, value: str | None) -> bool:
    if value is None:
        return True
    try:
        return _BOOLS[value]
    except KeyError:
        raise RunUsageError(f"run: {option} {key}={value}: unknown boolean flag `{value}`, "
                         "only yes,no,<nothing> accepted") from None


def _number(option: str, key: str, value: str | None) -> int:
    """wasmtime's N: decimal or 0x hex, `_` ignored, 0 <= N < 2**64."""
    if value is None:
        raise RunUsageError(f"run: {option} {key}: value must be specified with `key=val` syntax")
    text = value.replace("_", "")
    digits, base = (text[2:], 16) if text.startswith("0x") else (text.removeprefix("+"), 10)
    try:
        number = int(digits, base) if digits.isascii() and digits.isalnum() else -1
    except ValueError:
        number = -1
    if not 0 <= number < 1 << 64:
        raise RunUsageError(f"run: {option} {key}={value}: expected a whole number")
    return number


def parse_duration(value: str | None) -> float:
    """Seconds, from wasmtime's duration syntax: N (seconds), Ns, Nms, Nus/μs, Nns; N a whole number."""
    text = value or ""
    for suffix, scale in (("", 1.0), ("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("μs", 1e-6), ("ns", 1e-9)):
        if suffix and not text.endswith(suffix):
            continue
        number = text[: len(text) - len(suffix)]
        if number.removeprefix("+").isdigit() and number.removeprefix("+").isascii():
            return int(number) * scale
    raise RunUsageError(f"run: -W timeout={text}: failed to parse duration: {text} (examples: 1, 2s, 500ms)")


USAGE: Final = """\
Usage: wasmcache run [OPTIONS] FILE [ARGS...]

Run a WebAssembly module or WASI 0.2 command component through the cache, as `wasmtime run` does:
ARGS go to the guest (or to the --invoke function). FILE may be a .wasm binary, WAT text, or - (stdin).

Options (as in wasmtime run):
  --dir HOST[::GUEST]     preopen a host directory for the guest
  --env NAME[=VAL]        set an environment variable (NAME alone: inherit it if set)
  --invoke NAME           call this exported function (after _initialize) and print its results
  --argv0 NAME            the guest's argv[0] (default: FILE's base name)
  --preload NAME=PATH     instantiate PATH first and link it as module NAME (core modules)
  -W KEY[=VAL,...]        wasm features, fuel=N, timeout=N|Ns|Nms, epoch-interruption, max-memory-size=N,
                          max-table-elements=N, max-instances=N, max-tables=N, max-memories=N,
                          unknown-imports-trap, unknown-imports-default
  -C KEY[=VAL,...]        compiler=cranelift|winch, debug-info, cache=y|n
  -O KEY[=VAL,...]        opt-level=0|1|2|s
  -S KEY[=VAL,...]        cli, inherit-env, inherit-stdin, inherit-stdout, inherit-stderr, http
  --                      end of options: the next word is FILE

wasmcache's own:
  --memory                load the cache entry into memory instead of mapping it
  --cache-dir DIR         cache root (default: $WASMCACHE_DIR, else the user cache directory)
  --remote s3://B[/P]     shared remote tier (default: $WASMCACHE_REMOTE)
  --signing-key KEY.pem   sign and upload what this host compiles
  --trusted-key PUB.pem   accept remote artifacts signed by this key (repeatable)
  --substituter URL       ask this static host for a publisher's precompiled module before compiling
                          (repeatable, in priority order; default: $WASMCACHE_SUBSTITUTERS)
  --substituter-root F    trust precompiled modules signed under this root.json (repeatable; default:
                          $WASMCACHE_SUBSTITUTER_ROOTS)
  -h, --help              show this help

Exit status: the guest's exit code; 134 after a trap (a -W timeout deadline included); 1 for other
runtime errors; 2 for a usage error or an input that cannot be run.
"""
