"""The exception hierarchy: one root, a few precise subclasses, and wasmtime's messages on one line.

Every message names the file (or setting) at fault and, where there is one, the fix. Internal
exceptions (never seen by callers) live here too, under the same root.
"""

from __future__ import annotations

TYPE_CHECKING = False  # no `typing` at run time: `import wasmcache` loads this module and nothing else


class CacheError(Exception):
    """Root of every error wasmcache raises on purpose."""


class CompileError(CacheError, ValueError):
    """The input is not a valid WebAssembly module/component for this engine; nothing was cached.

    `wasmtime_error` is the `wasmtime.WasmtimeError` wasmtime raised (None after unpickling), so a
    caller that must behave exactly as wasmtime does (the drop-in) can raise it unchanged.
    """

    def __init__(self, source: str, reason: str, wasmtime_error: BaseException | None = None) -> None:
        super().__init__(f"{source}: cannot compile: {reason}")
        self.source = source
        self.reason = reason
        self.wasmtime_error = wasmtime_error

    def __reduce__(self) -> tuple[type[CompileError], tuple[str, str]]:
        # Keep the constructor picklable across processes (wasmtime's error object is not).
        return (type(self), (self.source, self.reason))


class ConfigError(CacheError, ValueError):
    """An invalid setting (engine option, size string, environment variable), refused before use."""


class EngineCannotCompileError(ConfigError):
    """The engine given cannot compile a function (another target, settings the host cannot run): every
    load would fail as wasmtime's own would. Internal: raised as a ConfigError to callers."""


class NotACacheError(CacheError):
    """A directory that is not a wasmcache root, so it is never written to, collected or wiped."""


class UnsafeCacheError(CacheError, PermissionError):
    """The cache root or an entry could be rewritten by someone else (world-writable, foreign owner)."""


class SourceError(CacheError, OSError):
    """The wasm input could not be read (missing, not a regular file, changed while read)."""


# --- wasmtime's messages ---------------------------------------------------------------------------

_CAUSE_NUMBER = r"^\d+:\s+"
_FRAME = r"^\d+:\s+0x[0-9a-f]+\s+-\s"


def wasmtime_error_chain(error: BaseException | str) -> list[str]:
    """wasmtime's error (anyhow's `context\\n\\nCaused by:\\n  0: ...`) as its messages, outermost first.

    Source excerpts of WAT errors collapse into the location (`expected ( at <anon>:1:1`), wasm
    backtrace frames are dropped: what is left reads on one line, joined with ": ".
    """
    import re  # noqa: PLC0415 - only when there is an error to describe

    text = str(error).strip()
    if not text:
        return [type(error).__name__ if isinstance(error, BaseException) else "unknown error"]
    head: list[str] = []
    causes: list[str] = []
    in_causes = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line == "Caused by:":
            in_causes = True
        elif in_causes:
            causes.append(re.sub(_CAUSE_NUMBER, "", line))
        elif line.startswith("--> ") and head:
            head[-1] += f" at {line[4:]}"
        elif not head:
            head.append(line)
        # else: a WAT source excerpt (`|`, `1 | hello`) or a backtrace frame: the first line says it
    return [part.removesuffix(":") for part in head + causes if not re.match(_FRAME, part)] or [text]


def wasmtime_reason(error: BaseException | str) -> str:
    """The whole chain on one line (what a compile error says)."""
    return ": ".join(wasmtime_error_chain(error))


def fd_named(text: str, path: str) -> str:
    """`text` (wasmtime's words about a checked entry it mapped through `/proc/self/fd/N`) with `path`
    where it names that descriptor: what a person reads names their file, never our fd."""
    if "/fd/" not in text:
        return text
    import re  # noqa: PLC0415 - only for such a message

    return re.sub(r"/(?:proc/self|dev)/fd/\d+", lambda _m: path, text)
