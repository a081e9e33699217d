"""A wasmcache hit by path in a fresh process, with each step timed: `python bench/profile_child.py SPEC`.

Modes: "plain" (no instrumentation: the true totals), "steps" (wrappers around the functions of
the hit path; inclusive times, so nested steps are part of their parent), "floor" (Engine() and
deserialize_file timed apart), "cprofile" (top functions) and "strace" (markers around the load,
so the parent can count the syscalls of the hit alone).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

STEPS: dict[str, list[float]] = {}


def _timed(name, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            entry = STEPS.setdefault(name, [0.0, 0])
            entry[0] += time.perf_counter() - t
            entry[1] += 1

    return wrapper


class _TimedOs:
    """Stands in for `os` inside one wasmcache module: the named calls timed one by one."""

    def __init__(self, real, where: str, names: tuple[str, ...]) -> None:
        self._real = real
        self._timed = {name: _timed(f"os.{name} (in {where})", getattr(real, name)) for name in names}

    def __getattr__(self, name):
        return self._timed.get(name) or getattr(self._real, name)


def _instrument():
    import wasmtime

    import wasmcache._cache as cache_mod
    import wasmcache._engine as engine_mod
    import wasmcache._fs as store_mod

    mc = cache_mod.ModuleCache
    for name in ("_open_root", "_wasm_digest", "_digest", "_miss", "_produce", "_make_engine",
                 "_loaded_modules", "_load_entry", "_safe", "_deserialize", "_verify_content", "_compile_and_publish",
                 "_compile", "_publish", "_ensure_namespace", "_account", "_read_source", "_load_remote"):
        if hasattr(mc, name):
            setattr(mc, name, _timed(f"ModuleCache.{name}", getattr(mc, name)))
    if "_identity_token" in mc.__dict__:
        token = mc.__dict__["_identity_token"].__func__
        mc._identity_token = staticmethod(_timed("ModuleCache._identity_token", token))
    for name in ("initialize_root", "default_engine", "engine_identity", "cache_key", "read_record", "record_path",
                 "default_max_size", "publish_atomically", "write_record", "quarantine"):
        if hasattr(cache_mod, name):
            setattr(cache_mod, name, _timed(f"_cache.{name}", getattr(cache_mod, name)))
    lock = cache_mod.KeyLock
    lock.acquire = _timed("KeyLock.acquire", lock.acquire)
    store_mod.os = _TimedOs(os, "_store", ("fsync", "write", "rename", "replace", "open", "fstat", "fchmod"))
    for name in ("_wasmtime_library_identity", "cpu_identity", "host_identity", "_read_memo",
                 "_remember_fingerprint", "engine_section", "_write_memo"):
        if hasattr(engine_mod, name):  # the source moves on; profile what exists
            setattr(engine_mod, name, _timed(f"_engine.{name}", getattr(engine_mod, name)))
    record = store_mod.Record
    record.from_json = classmethod(_timed("Record.from_json", record.from_json.__func__))
    cache_mod.os = _TimedOs(os, "_cache", ("open", "fstat", "stat", "close", "utime", "access", "read"))

    real_engine = wasmtime.Engine

    class TimedEngine(real_engine):
        def __init__(self, *args, **kwargs):
            t = time.perf_counter()
            super().__init__(*args, **kwargs)
            entry = STEPS.setdefault("wasmtime.Engine()", [0.0, 0])
            entry[0] += time.perf_counter() - t
            entry[1] += 1

    wasmtime.Engine = TimedEngine
    module_cls = wasmtime.Module
    module_cls.deserialize_file = classmethod(
        _timed("wasmtime.Module.deserialize_file", module_cls.deserialize_file.__func__))
    module_cls.serialize = _timed("wasmtime.Module.serialize", module_cls.serialize)


def main():
    spec = json.loads(sys.argv[1])
    mode = spec["mode"]
    out = {"startup_to_main": time.perf_counter() - T_START}
    t = time.perf_counter()
    import wasmtime

    out["import_wasmtime"] = time.perf_counter() - t
    if mode == "floor":
        t = time.perf_counter()
        engine = wasmtime.Engine()
        out["engine"] = time.perf_counter() - t
        t = time.perf_counter()
        module = wasmtime.Module.deserialize_file(engine, spec["cwasm"])
        out["deserialize_file"] = time.perf_counter() - t  # taken while `module` lives: no unmap inside
        out["total"] = out["engine"] + out["deserialize_file"]
        print(json.dumps(out))
        del module
        return
    t = time.perf_counter()
    import wasmcache

    out["import_wasmcache"] = time.perf_counter() - t
    if mode in ("steps", "miss"):
        _instrument()
    profiler = None
    if mode == "cprofile":
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    source = spec["wasm"]
    if mode == "bytes":
        with open(source, "rb") as f:
            source = f.read()  # not part of the load
    if mode == "strace":
        os.access("/wasmcache-bench-marker-begin", os.F_OK)
    t0 = time.perf_counter()
    cache = wasmcache.ModuleCache(spec["root"])
    t1 = time.perf_counter()
    t2 = time.perf_counter()
    module = cache.load(source)  # kept: a dropped module would be unmapped inside the timed region
    t3 = time.perf_counter()
    if mode == "strace":
        os.access("/wasmcache-bench-marker-end", os.F_OK)
    if profiler is not None:
        profiler.disable()
        import io
        import pstats

        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(18)
        out["cprofile"] = buffer.getvalue()
    stats = cache.stats()
    del module
    out.update(ctor=t1 - t0, load=t3 - t2, total=(t1 - t0) + (t3 - t2), hits=stats.hits, compiles=stats.compiles,
               steps=STEPS)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
