"""Cold start: 4 and 8 processes loading the 49 MB Yosys module at the same instant on an empty root
share one compile (single flight); the wall time from "go" to the last ready module against one compile."""

from __future__ import annotations

import json
import subprocess
import time

from bench.harness import BenchError, Context, child, env_for, goal, sample, summarize, yosys_wasm

GOAL = 1.3
SIZES = (4, 8)


def cold_group(command: tuple[list[str], dict[str, str]], n: int) -> dict:
    argv, env = command
    procs = [subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(n)]
    for proc in procs:  # every process past its imports
        if not proc.stdout or not proc.stdout.readline():
            raise BenchError(f"cold: a process exited early: {proc.stderr.read()[-1500:] if proc.stderr else ''}")
    go = time.perf_counter()
    outs = [proc.communicate("go\n", timeout=900) for proc in procs]
    if any(proc.returncode for proc in procs):
        raise BenchError(f"cold: a process failed: {[e[-500:] for _, e in outs]}")
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    return {"wall_ready": max(r["t_end"] for r in results) - go,
            "compiles": sum(r.get("compiles", 1) for r in results)}


def measure(ctx: Context) -> dict:
    p = ctx.prepare(yosys_wasm())
    rounds = ctx.rounds(1, 5)
    ctx.say(f"cold: one bare compile vs {SIZES} processes on an empty root x {rounds}")
    groups: dict[str, list[dict]] = {"compile_1": [], **{f"wasmcache_{n}": [] for n in SIZES}}
    for r in range(rounds):
        names = list(groups)
        for name in names[r % 3:] + names[:r % 3]:
            if name == "compile_1":
                groups[name].append(cold_group(p.load("compile", ctx.head, then="cold"), 1))
                continue
            root = ctx.work / f"cold-{r}-{name}"
            sample((child("maintain", "stats", root), env_for(ctx.head)))  # an initialized, empty root
            groups[name].append(cold_group(p.load("wc_path", ctx.head, root=str(root), then="cold"), int(name[10:])))
    one = summarize([g["wall_ready"] for g in groups["compile_1"]])["median"]
    out: dict = {"groups": {name: {"wall_ready_s": summarize([g["wall_ready"] for g in runs]),
                                   "compiles": [g["compiles"] for g in runs]} for name, runs in groups.items()},
                 "goals": []}
    for n in SIZES:
        fig = out["groups"][f"wasmcache_{n}"]
        wall = fig["wall_ready_s"]["median"]
        extra = "" if n == 4 else " (figure, not a stated goal)"
        out["goals"] += [goal(f"{n} cold processes: exactly 1 compile{extra}", max(fig["compiles"]), 1,
                              f"compiles per round: {fig['compiles']}"),
                         goal(f"{n} cold processes: wall <= 1.3x one compile{extra}", wall / one, GOAL,
                              f"{wall:.2f} s vs {one:.2f} s")]
    return out
