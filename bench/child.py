"""One measurement in a fresh process: `python bench/child.py SPEC_JSON`; the last stdout line is JSON.

Run by path (not `-m`) so that nothing of the suite is imported: the child pays only for what the
contender it runs needs. Timing is taken here, around the load only: from creating the engine
(or `ModuleCache(...)`) to a ready `wasmtime.Module`. Imports, and the reading of the wasm for
contenders that take bytes, happen before the clock starts and are reported separately.

Contenders
  floor      Engine() + Module.deserialize_file(prepared .cwasm): the physical floor
  compile    Engine() + Module(engine, wasm bytes): no cache at all
  cfgcache   wasmtime's own cache: Config.cache = TOML file, then Module(engine, wasm bytes)
  naive      a hand-written mmap cache: read + sha256(wasm) -> DIR/<hex>.cwasm -> deserialize_file
  wc_path    wasmcache ModuleCache(root).load(path), mode="mmap"
  wc_bytes   wasmcache ModuleCache(root).load(wasm bytes), mode="mmap"
  wc_memory  wasmcache ModuleCache(root, mode="memory").load(path)
  wc_remote  wasmcache ModuleCache(root, remote=URL, trusted_keys=[PUB]).load(path), root empty:
             a local miss served by the remote tier (S3 client set-up and download inside the clock)
  wc_publish the same with signing_key=KEY on a remote that lacks the module: compile, publish, upload
  baseline   Engine() only (what a process costs without any module; for the PSS figure)

Actions: load (default), hold (load, instantiate, report, wait for stdin EOF: PSS figure),
cold (report ready, wait for "go" on stdin, then load: cold-start figure), serialize,
gen_entries, gc, stats.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sys
import time

BYTES_INPUT = {"compile", "cfgcache", "wc_bytes"}
WASMCACHE = {"wc_path", "wc_bytes", "wc_memory", "wc_remote", "wc_publish"}


def _config(spec):
    import wasmtime

    config = wasmtime.Config()
    if spec.get("exceptions"):
        config.wasm_exceptions = True
    return config


def _settings(spec):
    if not spec.get("exceptions"):
        return None
    from wasmcache import EngineSettings

    return EngineSettings(features={"exceptions": True})


def _load(spec, data):
    """(engine, module, extra) for the contender; everything here is inside the timed region."""
    import wasmtime

    contender = spec["contender"]
    extra = {}
    if contender == "floor":
        engine = wasmtime.Engine(_config(spec))
        return engine, wasmtime.Module.deserialize_file(engine, spec["cwasm"]), extra
    if contender == "baseline":
        return wasmtime.Engine(_config(spec)), None, extra
    if contender == "compile":
        engine = wasmtime.Engine(_config(spec))
        return engine, wasmtime.Module(engine, data), extra
    if contender == "cfgcache":
        config = _config(spec)
        config.cache = spec["toml"]
        engine = wasmtime.Engine(config)
        return engine, wasmtime.Module(engine, data), extra
    if contender == "naive":
        # The pattern seen in the wild: key = digest of the wasm only, entry written in place.
        with open(spec["wasm"], "rb") as f:
            wasm = f.read()
        entry = os.path.join(spec["naive_dir"], hashlib.sha256(wasm).hexdigest() + ".cwasm")
        engine = wasmtime.Engine(_config(spec))
        if os.path.exists(entry):
            extra["naive_hit"] = True
            return engine, wasmtime.Module.deserialize_file(engine, entry), extra
        module = wasmtime.Module(engine, wasm)
        with open(entry, "wb") as f:
            f.write(module.serialize())
        extra["naive_hit"] = False
        return engine, module, extra
    if contender in WASMCACHE:
        from wasmcache import ModuleCache

        mode = "memory" if contender == "wc_memory" else "mmap"
        remote = {}
        if contender in ("wc_remote", "wc_publish"):
            remote = {"remote": spec["remote"], "trusted_keys": [spec["trusted_key"]],
                      "signing_key": spec.get("signing_key")}
        cache = ModuleCache(spec["root"], engine=_settings(spec), mode=mode, **remote)
        module = cache.load(data if contender == "wc_bytes" else spec["wasm"])
        extra["cache"] = cache
        return cache.engine, module, extra
    raise SystemExit(f"unknown contender {contender!r}")


def _instantiate(engine, module):
    import wasmtime

    store = wasmtime.Store(engine)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store.set_wasi(wasmtime.WasiConfig())
    return store, linker.instantiate(store, module)


def _emit(out):
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


def _measure(spec):
    out = {"pid": os.getpid()}
    contender = spec["contender"]
    t = time.perf_counter()
    import wasmtime  # noqa: F401

    out["import_wasmtime"] = time.perf_counter() - t
    if contender in WASMCACHE:
        t = time.perf_counter()
        import wasmcache

        # `import wasmcache` loads its names on first use (PEP 562): what a loading process imports
        # (ModuleCache and everything behind it) is counted here, with the import, not in the load.
        _ = wasmcache.ModuleCache, wasmcache.EngineSettings
        out["import_wasmcache"] = time.perf_counter() - t
    data = None
    if contender in BYTES_INPUT:
        t = time.perf_counter()
        with open(spec["wasm"], "rb") as f:
            data = f.read()
        out["read"] = time.perf_counter() - t
    action = spec.get("action", "load")
    if action == "cold":
        _emit({"ready": True})
        sys.stdin.readline()
    t0 = time.perf_counter()
    engine, module, extra = _load(spec, data)
    t1 = time.perf_counter()
    out["t"] = t1 - t0
    out["t_end"] = t1  # CLOCK_MONOTONIC: comparable with the parent's perf_counter on Linux
    cache = extra.pop("cache", None)
    out.update(extra)
    if cache is not None:
        stats = cache.stats()
        out.update(hits=stats.hits, misses=stats.misses, compiles=stats.compiles)
        if "remote" in spec:
            out.update(remote_hits=stats.remote_hits, remote_misses=stats.remote_misses, uploads=stats.uploads,
                       rejected=stats.rejected)
    if action == "hold":
        held = _instantiate(engine, module) if module is not None else None
        del data
        gc.collect()
        out["held"] = held is not None
        _emit(out)
        sys.stdin.read()  # hold the module until the parent closes our stdin
        return
    _emit(out)


def _serialize(spec):
    import wasmtime

    with open(spec["wasm"], "rb") as f:
        data = f.read()
    engine = wasmtime.Engine(_config(spec))
    t = time.perf_counter()
    module = wasmtime.Module(engine, data)
    compile_s = time.perf_counter() - t
    serialized = module.serialize()
    tmp = spec["out"] + ".tmp"
    with open(tmp, "wb") as f:
        f.write(serialized)
    os.replace(tmp, spec["out"])
    _emit({"compile": compile_s, "size": len(serialized)})


def _tiny_module(i):
    import wasmtime

    # Distinct code per i (a different constant and function count), so every key is a real compile.
    funcs = " ".join(f'(func (export "f{j}") (result i32) i32.const {i * 8 + j})' for j in range(1 + i % 4))
    return bytes(wasmtime.wat2wasm(f"(module {funcs})"))


def _gen_entries(spec):
    from wasmcache import ModuleCache

    cache = ModuleCache(spec["root"])
    t = time.perf_counter()
    for i in range(spec["start"], spec["stop"]):
        cache.load(_tiny_module(i))
    _emit({"t": time.perf_counter() - t, "compiles": cache.stats().compiles})


def _gc(spec):
    t = time.perf_counter()
    from wasmcache import ModuleCache

    cache = ModuleCache(spec["root"])
    t0 = time.perf_counter()
    report = cache.gc(spec.get("max_size"))
    t1 = time.perf_counter()
    _emit({"t": t1 - t0, "t_with_import": t1 - t, "evicted": report.evicted_entries, "entries": report.entries,
           "size_bytes": report.size_bytes})


def _stats(spec):
    from wasmcache import ModuleCache

    cache = ModuleCache(spec["root"])
    t0 = time.perf_counter()
    stats = cache.stats()
    _emit({"t": time.perf_counter() - t0, "entries": stats.entries, "size_bytes": stats.size_bytes})


def _ls(spec):
    # `wasmcache ls` as a user runs it (whole process, table to a pipe), and entries() in-process.
    import subprocess

    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "wasmcache.cli", "ls", "--cache-dir", spec["root"]],
                          capture_output=True, check=True)
    cli_s = time.perf_counter() - t
    from wasmcache import ModuleCache

    cache = ModuleCache(spec["root"])
    t0 = time.perf_counter()
    listing = cache.entries()
    _emit({"t": cli_s, "entries_s": time.perf_counter() - t0, "rows": len(listing),
           "lines": proc.stdout.count(b"\n")})


def main():
    spec = json.loads(sys.argv[1])
    action = spec.get("action", "load")
    if action in ("load", "hold", "cold"):
        _measure(spec)
    elif action == "serialize":
        _serialize(spec)
    elif action == "gen_entries":
        _gen_entries(spec)
    elif action == "gc":
        _gc(spec)
    elif action == "stats":
        _stats(spec)
    elif action == "ls":
        _ls(spec)
    else:
        raise SystemExit(f"unknown action {action!r}")


if __name__ == "__main__":
    main()
