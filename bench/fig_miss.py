"""Miss: a wasmcache load on an empty root (read, hash, compile, publish, map) against a bare compile."""

from __future__ import annotations

import itertools
import shutil

from bench.harness import BenchError, Context, goal, interleave, ms, summaries, yosys_wasm

GOAL = 1.10


def measure(ctx: Context) -> dict:
    p = ctx.prepare(yosys_wasm())
    counter = itertools.count()

    def empty_root():  # one 15 MB entry on disk at a time
        root = ctx.work / "miss-roots" / str(next(counter))
        shutil.rmtree(root.parent, ignore_errors=True)
        return p.load("wc_path", ctx.head, root=str(root))

    def check(name: str, r: dict) -> None:
        if name == "wc_miss" and r["compiles"] != 1:
            raise BenchError(f"miss: a sample compiled {r['compiles']} times")

    rounds = ctx.rounds(2, 7)
    ctx.say(f"miss: a bare compile vs a wasmcache miss x {rounds} (~{p.setup['compile_s']:.0f} s each)")
    samples = interleave({"compile": p.load("compile", ctx.head), "wc_miss": empty_root}, rounds, warmup=0,
                         check=check)
    load = summaries(samples)
    ours, bare = load["wc_miss"]["median"], load["compile"]["median"]
    return {"load_s": load, "note": "compile is given the bytes already read; wasmcache the path (reads, hashes, "
                                    "publishes and maps inside the clock)",
            "goals": [goal("miss <= 1.10x a bare compile", ours / bare, GOAL, f"{ms(ours)} vs {ms(bare)}")]}
