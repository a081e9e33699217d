"""Every timed contender, one per fresh process: `python bench/child.py ACTION ARGS...`.

Run by path, importing nothing at the top but `sys`, so a whole-process figure pays only for what its
contender needs. Uses wasmcache's public API only (`ModuleCache`, `install`, the CLI). Actions that time
something in-process print one JSON line; the whole-process programs print nothing of their own.

In-process (`load CONTENDER SPEC`): the clock runs from `Engine()`/`ModuleCache()` to a ready module;
imports and reading the wasm (for contenders given bytes) come before it and are reported apart.
  floor      Engine() + Module.deserialize_file(prepared cwasm): no checks, the floor of every figure
  wc_path    ModuleCache(root).load(path)         wc_bytes   ModuleCache(root).load(wasm bytes)
  wc_memory  ModuleCache(root, mode="memory").load(path)
  naive      read + sha256(wasm) -> DIR/<hex>.cwasm -> deserialize_file (the hand-written cache)
  cfgcache   wasmtime's own cache: Config.cache = TOML, Module(engine, wasm bytes)
  compile    Engine() + Module(engine, wasm bytes)
  remote     ModuleCache(new root, remote=URL, trusted_keys=[PUB][, signing_key]).load(path)
  baseline   Engine() only (the PSS figure's process without a module)
  SPEC "then": "hold" (instantiate, report, wait for stdin EOF) or "cold" (report ready, wait for a line).

Whole processes: `lib_bare CWASM` (python, import wasmtime, Engine() + deserialize_file: the floor as a
process), `lib_hit ROOT WASM`, `run_bare CWASM WASM ARGS...` (the floor plus WASI and `_start`: the one
bare runner), `tool_compile WASM` (compiles on every start), `tool_yowasp CACHE WASM ARGS...` (YoWASP's
runtime: its own sha1-keyed cwasm file, mapped when present, written in place on a miss).
"""

import sys


def _emit(out):
    import json

    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


def _config(*, exceptions):
    import wasmtime

    config = wasmtime.Config()
    if exceptions:
        config.wasm_exceptions = True  # as YoWASP's runtime builds its engine
    return config


def _engine_settings(spec):
    from wasmcache import EngineSettings

    return EngineSettings(features={"exceptions": True}) if spec.get("exceptions") else None


def _load(contender, spec, data):
    """(engine, module, cache) for the contender: everything here is inside the clock."""
    import wasmtime

    if contender in ("floor", "baseline"):
        engine = wasmtime.Engine(_config(exceptions=spec["exceptions"]))
        module = None if contender == "baseline" else wasmtime.Module.deserialize_file(engine, spec["cwasm"])
        return engine, module, None
    if contender in ("compile", "cfgcache"):
        config = _config(exceptions=spec["exceptions"])
        if contender == "cfgcache":
            config.cache = spec["toml"]
        engine = wasmtime.Engine(config)
        return engine, wasmtime.Module(engine, data), None
    if contender == "naive":  # the pattern seen in the wild: key = digest of the wasm only
        import hashlib
        import os

        with open(spec["wasm"], "rb") as f:
            entry = os.path.join(spec["naive"], hashlib.sha256(f.read()).hexdigest() + ".cwasm")
        engine = wasmtime.Engine(_config(exceptions=spec["exceptions"]))
        return engine, wasmtime.Module.deserialize_file(engine, entry), None
    from wasmcache import ModuleCache

    options = {"mode": "memory" if contender == "wc_memory" else "mmap"}
    if contender == "remote":
        options.update(remote=spec["remote"], trusted_keys=[spec["trusted_key"]], signing_key=spec.get("signing_key"))
    cache = ModuleCache(spec["root"], engine=_engine_settings(spec), **options)
    return cache.engine, cache.load(data if contender == "wc_bytes" else spec["wasm"]), cache


def do_load(contender, spec_json):
    import json
    import time

    spec = json.loads(spec_json)
    t = time.perf_counter()
    import wasmtime

    out = {"import_wasmtime": time.perf_counter() - t}
    if contender.startswith(("wc_", "remote")):
        t = time.perf_counter()
        import wasmcache

        _ = wasmcache.ModuleCache, wasmcache.EngineSettings  # lazy names: their modules load here, not in the clock
        out["import_wasmcache"] = time.perf_counter() - t
    data = None
    if contender in ("compile", "cfgcache", "wc_bytes"):
        t = time.perf_counter()
        with open(spec["wasm"], "rb") as f:
            data = f.read()
        out["read"] = time.perf_counter() - t
    if spec.get("then") == "cold":
        _emit({"ready": True})
        sys.stdin.readline()
    t0 = time.perf_counter()
    engine, module, cache = _load(contender, spec, data)
    out["t_end"] = t1 = time.perf_counter()  # CLOCK_MONOTONIC: comparable with the parent's on Linux
    out["t"] = t1 - t0
    if cache is not None:
        s = cache.stats()
        out.update(hits=s.hits, compiles=s.compiles, remote_hits=s.remote_hits, uploads=s.uploads,
                   rejected=s.rejected)
    if spec.get("then") == "hold":
        if module is not None:
            store = wasmtime.Store(engine)
            linker = wasmtime.Linker(engine)
            linker.define_wasi()
            store.set_wasi(wasmtime.WasiConfig())
            held = linker.instantiate(store, module)  # noqa: F841 - kept alive until stdin closes
        del data
        _emit(out)
        sys.stdin.read()
        return
    _emit(out)


def do_serialize(wasm, out, exceptions):
    import hashlib
    import os
    import time

    import wasmtime

    with open(wasm, "rb") as f:
        data = f.read()
    engine = wasmtime.Engine(_config(exceptions=exceptions == "1"))
    t = time.perf_counter()
    module = wasmtime.Module(engine, data)
    elapsed = time.perf_counter() - t
    with open(out + ".tmp", "wb") as f:
        f.write(module.serialize())
    os.replace(out + ".tmp", out)
    _emit({"t": elapsed, "sha256": hashlib.sha256(data).hexdigest()})


def do_gen_entries(root, start, stop):
    """Tiny distinct modules (a different constant and function count each), really compiled and published."""
    import wasmtime

    from wasmcache import ModuleCache

    cache = ModuleCache(root)
    for i in range(int(start), int(stop)):
        funcs = " ".join(f'(func (export "f{j}") (result i32) i32.const {i * 8 + j})' for j in range(1 + i % 4))
        cache.load(bytes(wasmtime.wat2wasm(f"(module {funcs})")))
    _emit({"compiles": cache.stats().compiles})


def do_maintain(action, root, *args):
    import time

    from wasmcache import ModuleCache

    cache = ModuleCache(root)
    t = time.perf_counter()
    if action == "gc":
        report = cache.gc(int(args[0]) if args else None)
        _emit({"t": time.perf_counter() - t, "evicted": report.evicted_entries, "entries": report.entries})
    elif action == "stats":
        stats = cache.stats()
        _emit({"t": time.perf_counter() - t, "entries": stats.entries, "size_bytes": stats.size_bytes})
    else:
        rows = len(cache.entries())
        _emit({"t": time.perf_counter() - t, "rows": rows})


def do_own_cwasm(mode, path, root):
    """A program's repeated `deserialize_file` of its own cwasm: bare, or under `wasmcache.install()`."""
    import time

    import wasmtime

    if mode == "dropin":
        import wasmcache

        wasmcache.install(root)
    t = time.perf_counter()
    module = wasmtime.Module.deserialize_file(wasmtime.Engine(_config(exceptions=True)), path)
    _emit({"t": time.perf_counter() - t, "exports": len(module.exports)})


def do_profile(mode, root, wasm, expected_json):
    """One hit by path, profiled: `cprofile` checks that every expected function (module:qualname) exists
    and ran; `strace` brackets the hit with two failing stat() calls that mark it in the trace."""
    import json
    import os

    import wasmtime  # noqa: F401 - imported before the hit, as in any loading process

    import wasmcache

    module_cache = wasmcache.ModuleCache
    if mode == "strace":
        for mark in ("begin", "end"):
            try:
                os.stat(f"/wasmcache-bench-hit-{mark}")
            except OSError:
                pass
            if mark == "begin":
                module_cache(root).load(wasm)
        return
    import cProfile
    import importlib
    import inspect
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    module_cache(root).load(wasm)
    profile.disable()
    stats = pstats.Stats(profile).stats
    out = {"missing": [], "not_called": [], "expected": {}, "top": []}
    for name in json.loads(expected_json):
        module_name, qualname = name.split(":")
        try:
            obj = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = inspect.getattr_static(obj, part)
        except (ImportError, AttributeError):
            out["missing"].append(name)
            continue
        code = getattr(inspect.unwrap(getattr(obj, "fget", None) or getattr(obj, "__func__", obj)), "__code__", None)
        row = stats.get((code.co_filename, code.co_firstlineno, code.co_name)) if code else None
        if row is None:
            out["not_called"].append(name)
        else:
            out["expected"][name] = {"calls": row[1], "tottime": row[2], "cumtime": row[3]}
    for (path, line, func), row in sorted(stats.items(), key=lambda kv: -kv[1][2])[:15]:
        out["top"].append({"function": f"{path.rsplit('/', 2)[-1]}:{line}({func})", "calls": row[1],
                           "tottime": row[2], "cumtime": row[3]})
    _emit(out)


# --- whole processes: nothing printed but the program's own output ------------------------------------


def do_lib_bare(cwasm):
    import wasmtime

    engine = wasmtime.Engine()
    return engine, wasmtime.Module.deserialize_file(engine, cwasm)


def do_lib_hit(root, wasm):
    import wasmtime  # noqa: F401 - as the issue states the process: both imports, then the load

    import wasmcache

    wasmcache.ModuleCache(root).load(wasm)


def _run_wasi(engine, module, argv0, args):
    import wasmtime

    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.argv = [argv0.rsplit("/", 1)[-1], *args]
    wasi.inherit_stdin()
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    try:
        linker.instantiate(store, module).exports(store)["_start"](store)
    except wasmtime.ExitTrap as e:
        sys.exit(e.code)


def do_run_bare(cwasm, wasm, *args):
    _run_wasi(*do_lib_bare(cwasm), wasm, args)


def do_tool_compile(wasm):
    import wasmtime

    wasmtime.Module.from_file(wasmtime.Engine(), wasm)


def do_tool_yowasp(cache_dir, wasm, *args):
    import hashlib
    import os

    import wasmtime

    engine = wasmtime.Engine(_config(exceptions=True))
    with open(wasm, "rb") as f:
        data = f.read()
    path = os.path.join(cache_dir, hashlib.sha1(data).hexdigest())
    module = None
    if os.path.exists(path):
        try:
            module = wasmtime.Module.deserialize_file(engine, path)
        except wasmtime.WasmtimeError:
            pass
    if module is None:
        module = wasmtime.Module(engine, data)
        os.makedirs(cache_dir, exist_ok=True)
        with open(path, "wb") as f:  # in place, no rename: what makes two versions crash each other
            f.write(module.serialize())
    _run_wasi(engine, module, wasm, args)


if __name__ == "__main__":
    globals()[f"do_{sys.argv[1]}"](*sys.argv[2:])
