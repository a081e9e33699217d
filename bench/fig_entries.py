"""Scale: a hit by path in roots of 10, 1,000 and 10,000 real entries; `gc`, `stats()`, `entries()` and
`wasmcache ls` at the largest. Roots are built once (tiny distinct modules compiled and published by
wasmcache, plus Yosys) and kept in bench/results/fixtures; quick mode builds at most 1,000."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from bench import harness as h

GOALS = {"flat": 1.2, "stats_s": 1e-3, "ls_s": 1.0}
COUNTS = (10, 1000, 10000)


def fixture(ctx: h.Context, count: int) -> str | None:
    import wasmtime

    import wasmcache

    base = h.RESULTS / "fixtures" / f"entries-{wasmcache.engine_fingerprint(wasmtime.Engine())[:12]}-{count}"
    if (base / "complete").exists():
        return str(base / "root")
    if ctx.quick and count > 1000:
        return None
    shutil.rmtree(base, ignore_errors=True)
    ctx.say(f"entries: building a root of {count} real entries (kept in {base})")
    env = h.env_for(ctx.head)
    procs = [subprocess.Popen(h.child("gen_entries", base / "root", count * i // 2, count * (i + 1) // 2), env=env,
                              stdout=subprocess.DEVNULL) for i in range(2)]
    if any(proc.wait() for proc in procs):
        raise h.BenchError(f"entries: building the {count}-entry root failed")
    h.sample(ctx.prepare(h.yosys_wasm()).load("wc_path", ctx.head, root=str(base / "root")))  # Yosys's entry
    (base / "complete").write_text(json.dumps({"entries": count + 1}))
    return str(base / "root")


def measure(ctx: h.Context) -> dict:
    p = ctx.prepare(h.yosys_wasm())
    roots = {n: root for n in COUNTS if (root := fixture(ctx, n)) is not None}
    rounds = ctx.rounds(5, 15)
    ctx.say(f"entries: hit by path in roots of {list(roots)} entries x {rounds}")
    load = h.summaries(h.interleave({str(n): p.load("wc_path", ctx.head, root=root) for n, root in roots.items()},
                                rounds, check=h.clean_hits("entries")))
    lo, hi = min(roots), max(roots)
    out: dict = {"load_s": load, "goals": [h.goal(f"hit flat in entry count ({lo} -> {hi} within 1.2x)",
                                                load[str(hi)]["median"] / load[str(lo)]["median"], GOALS["flat"],
                                                f"{h.ms(load[str(lo)]['median'])} -> {h.ms(load[str(hi)]['median'])}")]}
    if hi < 10000:
        out["note"] = "no 10,000-entry root yet (quick mode does not build it): gc, stats and ls skipped"
        return out
    root, env = roots[hi], h.env_for(ctx.head)
    n = ctx.rounds(3, 5)
    gc = h.summarize([h.sample((h.child("maintain", "gc", root), env))["t"] for _ in range(n)])
    stats = h.summarize([h.sample((h.child("maintain", "stats", root), env))["t"] for _ in range(n)])
    entries = h.summarize([h.sample((h.child("maintain", "entries", root), env))["t"] for _ in range(n)])
    ls = h.summarize([h.sample(([*h.wasmcache_cli(), "ls", "--cache-dir", root], env))["wall"] for _ in range(n)])
    copy = ctx.work / "gc-copy"
    shutil.copytree(root, copy, symlinks=True)
    size = sum(e.stat().st_size for e in os.scandir(next(copy.glob("ns-*"))) if e.is_file())
    evict = h.sample((h.child("maintain", "gc", copy, size // 2), env))
    out.update(gc_s=gc, stats_s=stats, entries_s=entries, ls_cli_s=ls, gc_evict_half_s=evict["t"],
               evicted=evict["evicted"])
    out["goals"] += [h.goal("stats() <= 1 ms at 10,000 entries", stats["median"], GOALS["stats_s"],
                          h.ms(stats["median"])),
                     h.goal("`wasmcache ls` <= 1 s at 10,000 entries (whole process)", ls["median"], GOALS["ls_s"],
                          f"{h.ms(ls['median'])} (entries() {h.ms(entries['median'])}; gc {h.ms(gc['median'])}, "
                          f"evicting half {h.ms(evict['t'])})")]
    return out
