"""What a `ModuleCache` and its miss path share, handed to both explicitly: the root and what may be
done with it, the engine (built on first use), the settings that bound waiting and size, the counters.

Nothing here loads or publishes: the hit path (`_cache`), the miss path (`_miss`) and storage
(`_storage`) do that, each reading this one object rather than reaching into one another.
"""

from __future__ import annotations

import os
from _thread import allocate_lock
from _weakref import ref
from typing import TYPE_CHECKING, Final, Literal

from ._errors import CacheError, ConfigError, UnsafeCacheError
from ._fingerprint import EngineIdentity, EngineMemo, default_engine, engine_identity
from ._layout import ENGINES_DIR
from ._log import log
from ._root import (
    disabled_by_environment,
    has_marker,
    initialize_root,
    resolve_max_size,
    resolve_root,
    unreachable_reason,
    unsafe_fix,
    unsafe_reason,
)
from ._storage import Namespace

if TYPE_CHECKING:
    from pathlib import Path

    import wasmtime

    from ._engine import EngineSettings

Mode = Literal["mmap", "memory"]

# How long a loader waits for another process compiling the same key before compiling itself.
DEFAULT_LOCK_TIMEOUT: Final = 900.0


class Place:
    """Where a key's entry lives: its namespace, and the engine that namespace is for.

    `section` None: not known yet (a snapshot found by its memo; the miss reads it from the artifact).
    `serialized`: the entry is a snapshot of a serialized input (its namespace is the artifact's own engine).
    A plain class, not a NamedTuple: building one of those costs every process that loads a module ~0.1 ms.
    """

    __slots__ = ("fingerprint", "namespace", "section", "serialized")

    def __init__(self, namespace: Namespace, section: bytes | None, fingerprint: str, *, serialized: bool) -> None:
        self.namespace = namespace
        self.section = section
        self.fingerprint = fingerprint
        self.serialized = serialized


class Counters:
    """The counters of one ModuleCache, safe to bump from any thread."""

    NAMES: Final = ("hits", "misses", "compiles", "remote_hits", "remote_misses", "uploads", "rejected", "substituted")

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._values = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


_said_read_only: set[str] = set()


class CacheContext:
    """A cache's root, engine, settings and counters. `disabled`: compile every time, remember nothing."""

    def __init__(self, root: str | os.PathLike[str] | None, *, engine: wasmtime.Engine | EngineSettings | None,
                 mode: Mode, max_size: int | str | None, lock_timeout: float, strict: bool, enabled: bool) -> None:
        if mode not in ("mmap", "memory"):
            raise ConfigError(f"mode={mode!r}: expected 'mmap' or 'memory'")
        self.root: Path = resolve_root(root)
        self.mode: Mode = mode
        self.max_size = resolve_max_size(max_size)
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) or not lock_timeout >= 0:
            raise ConfigError(f"lock_timeout={lock_timeout!r}: expected a number of seconds, 0 or more")
        self.lock_timeout = float(lock_timeout)
        self.strict = strict
        self.disabled = not enabled or disabled_by_environment()
        self.writable = False
        self.initialized = False  # the root carries our marker (memos may be read from it)
        self.counters = Counters()
        self._engine_arg = engine
        self._engine: wasmtime.Engine | None = None
        self._engine_ref: ref[wasmtime.Engine] | None = None  # instead of the two above (hold_engine_weakly)
        self._identity: EngineIdentity | None = None
        self._namespace: Namespace | None = None
        self._namespaces_checked: set[str] = set()  # names of the namespaces whose permissions were checked
        self._guard = allocate_lock()
        if not self.disabled:
            self._open_root()

    @property
    def stores(self) -> bool:
        """Whether a miss may publish (lock, write): a writable root, not disabled."""
        return self.writable and not self.disabled

    @property
    def memo_root(self) -> Path | None:
        """Where input digests are remembered: an initialized root, and only while caching."""
        return self.root if self.initialized and not self.disabled else None

    def _open_root(self) -> None:
        """Create or adopt the root; a root we cannot write still serves hits (read-only mode)."""
        try:
            existing: os.stat_result | None = os.stat(self.root)
        except OSError:
            existing = None
        if existing is not None and not self.safe(self.root, existing):
            return  # refused before anything is written into it
        try:
            initialize_root(self.root)
        except OSError as exc:
            if not has_marker(self.root):
                log.warning("wasmcache: cannot %s cache root %s (%s); nothing will be cached",
                            "create" if existing is None else "initialize", self.root,
                            unreachable_reason(self.root) or exc.strerror or exc)
                return
        if existing is None and not self.safe(self.root, os.stat(self.root)):
            return  # created just now (by us, or a racing process): check what is there
        self.initialized = True
        self.writable = os.access(self.root, os.W_OK)
        if not self.writable and str(self.root) not in _said_read_only:
            _said_read_only.add(str(self.root))  # once per process (the drop-in makes a cache per engine)
            log.info("wasmcache: %s is read-only: serving hits, compiling misses in memory", self.root)

    def safe(self, path: Path, st: os.stat_result) -> bool:
        """Refuse (strict) or stop using (strict=False) a cache path that others could rewrite."""
        reason = unsafe_reason(st)
        if reason is None:
            return True
        return self.unsafe(path, reason)

    def unsafe(self, path: Path, reason: str) -> bool:
        message = (f"{path} {reason}: another user could plant native code that this process would run; "
                   f"fix: {unsafe_fix(path, reason)}")
        if self.strict:
            raise UnsafeCacheError(message)
        log.warning("wasmcache: %s (strict=False: compiling without the cache)", message)
        self.disabled = True
        self.writable = False
        return False

    def namespace_usable(self, namespace: Namespace) -> bool:
        """The namespace exists and nobody else could write it (checked once per cache)."""
        if namespace.name in self._namespaces_checked:
            return True
        try:
            namespace_stat = os.stat(namespace.path)
        except OSError:
            return False  # no namespace yet: nothing to load
        if not self.safe(namespace.path, namespace_stat):
            return False
        self._namespaces_checked.add(namespace.name)
        return True

    # --- the engine ---------------------------------------------------------------------------

    def hold_engine_weakly(self) -> None:
        """The drop-in's cache hangs on the program's engine: a strong reference back would make a cycle
        only the collector frees (a program with it off, or slow to run it, would keep every engine)."""
        engine = self.engine
        self._engine_ref = ref(engine)
        self._engine_arg = self._engine = None

    @property
    def engine(self) -> wasmtime.Engine:
        if self._engine_ref is not None:
            engine = self._engine_ref()
            if engine is None:
                raise CacheError("the engine of this cache is gone")
            return engine
        if self._engine is None:
            with self._guard:
                if self._engine is None:
                    self._engine = self._make_engine()
        return self._engine

    def _make_engine(self) -> wasmtime.Engine:
        import wasmtime  # noqa: PLC0415 - `import wasmcache` stays light

        arg = self._engine_arg
        # Memos live only inside an initialized root (written only where it is writable).
        memo = EngineMemo(self.root / ENGINES_DIR, writable=self.writable) if self.initialized else None
        if arg is None:
            return default_engine(memo)
        if isinstance(arg, wasmtime.Engine):  # the program's own (the drop-in's case)
            return arg
        from ._engine import EngineSettings  # noqa: PLC0415 - a process that loads with a given engine has no use for it

        if isinstance(arg, EngineSettings):
            return arg.build_with_memo(memo)
        raise ConfigError(f"engine: expected a wasmtime.Engine or EngineSettings, got {type(arg).__name__}")

    @property
    def engine_identity(self) -> EngineIdentity:
        if self._identity is None:
            self._identity = engine_identity(self.engine)
        return self._identity

    @property
    def namespace(self) -> Namespace:
        """The namespace of this engine's entries."""
        if self._namespace is None:
            self._namespace = Namespace.of(self.root, self.engine_identity.fingerprint)
        return self._namespace
