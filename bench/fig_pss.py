"""Memory: total PSS of 6 processes, each holding an instance of the 49 MB Yosys module."""

from __future__ import annotations

import subprocess

from bench.harness import BenchError, Context, goal, summarize, yosys_wasm

GOAL = 0.6
PROCESSES = 6
CONTENDERS = ("baseline", "floor", "wc_path", "wc_memory", "cfgcache")


def _rollup(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        rows = [line.split() for line in f]
    return {r[0].rstrip(":"): int(r[1]) * 1024 for r in rows if len(r) == 3 and r[2] == "kB"}


def hold_group(command: tuple[list[str], dict[str, str]]) -> dict[str, int]:
    """Start the processes, wait until each holds its instance, sum their smaps_rollup, let them go."""
    argv, env = command
    procs = [subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(PROCESSES)]
    try:
        for proc in procs:
            if not proc.stdout or not proc.stdout.readline():
                raise BenchError(f"pss: a holder exited: {proc.stderr.read()[-1500:] if proc.stderr else ''}")
        rollups = [_rollup(proc.pid) for proc in procs]
    finally:
        for proc in procs:
            proc.communicate(timeout=60)
    return {k: sum(r.get(k, 0) for r in rollups) for k in ("Pss", "Rss", "Pss_Anon", "Pss_File")}


def measure(ctx: Context) -> dict:
    p = ctx.prepare(yosys_wasm())
    rounds = ctx.rounds(1, 3)
    ctx.say(f"pss: {PROCESSES} processes holding Yosys, {len(CONTENDERS)} contenders x {rounds}")
    groups: dict[str, list[dict]] = {c: [] for c in CONTENDERS}
    for r in range(rounds):
        for c in CONTENDERS[r % 5:] + CONTENDERS[:r % 5]:
            groups[c].append(hold_group(p.load(c, ctx.head, then="hold")))
    pss = {c: summarize([g["Pss"] for g in groups[c]]) for c in CONTENDERS}
    ours, theirs = pss["wc_path"]["median"], pss["cfgcache"]["median"]
    return {"processes": PROCESSES, "pss_bytes": pss, "groups": groups,
            "note": "sum of Pss (smaps_rollup) of 6 live processes; baseline = python + wasmtime + Engine(), no module",
            "goals": [goal("total PSS of 6 processes <= 0.6x Config.cache's", ours / theirs, GOAL,
                           f"{ours / 1e6:.1f} MB vs {theirs / 1e6:.1f} MB")]}
