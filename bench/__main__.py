"""`python -m bench [--quick] [--only FIG,...] [--against REV]`: measure, judge every goal, write the results.

Full runs of every figure write docs/bench-results.json and docs/bench.png; other runs write
bench/results/results[-quick][-partial].json and .png only.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import sys
import time
from typing import TYPE_CHECKING

from bench.harness import REPO, RESULTS, Context, current_tree, extract_tree, machine

if TYPE_CHECKING:
    from pathlib import Path

# Run in this order (the remote figure uses the miss figure's compile; every figure reuses the prepared modules).
FIGURES = ("hit", "miss", "pss", "cold", "entries", "size", "remote", "substitute", "run", "dropin", "guest")
DOCS = REPO / "docs"


def plot(results: dict, path: Path) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    f = results["figures"]
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    ax = axes[0][0]
    if "hit" in f:
        load = f["hit"]["yosys"]["load_s"]
        names = list(load)
        ax.barh(names, [load[n]["median"] * 1e3 for n in names],
                xerr=[[(load[n]["median"] - load[n]["q1"]) * 1e3 for n in names],
                      [(load[n]["q3"] - load[n]["median"]) * 1e3 for n in names]], color="tab:blue")
        ax.set_xscale("log")
    ax.set(title="hit in a fresh process, 49 MB Yosys (median, q1-q3)", xlabel="ms (log)")
    ax = axes[0][1]
    if "size" in f:
        for c in ("floor", "wc_path"):
            sizes = f["size"]["sizes"]
            ax.plot(sizes, [f["size"]["load_s"][f"{s}/{c}"]["median"] * 1e3 for s in sizes], marker="o", label=c)
        ax.set_xscale("log")
        ax.legend()
    ax.set(title="hit by path vs module size", xlabel="wasm bytes (log)", ylabel="ms")
    ax = axes[1][0]
    for key, label in (("run", "run yosys -V"), ("guest", "guest costs")):
        if key in f:
            wall = f[key]["wall_s"]
            ax.barh([f"{label}: {n}" for n in wall], [s["median"] * 1e3 for s in wall.values()])
    ax.set(title="whole processes, spawn to exit (median)", xlabel="ms")
    ax = axes[1][1]
    judged = [g for g in results["goals"] if g["value"] is not None and g["limit"]]
    ax.barh([g["goal"][:58] for g in judged], [g["value"] / g["limit"] for g in judged],
            color=["tab:green" if g["status"] == "PASS" else "tab:red" for g in judged])
    ax.axvline(1.0, color="black")
    ax.set(title="every goal: measured / limit (<= 1 passes)", xscale="log")
    ax.tick_params(axis="y", labelsize=6)
    m = results["machine"]
    fig.suptitle(f"wasmcache {m['wasmcache_git']} ({results['mode']}): {m['cpu']}, {m['usable_cores']} cores, "
                 f"{m['kernel']}, {m['python']}, wasmtime {m['wasmtime']}, {m['date_utc']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def print_goals(results: dict) -> None:
    for g in results["goals"]:
        value = "" if g["value"] is None else f" ({g['value']:.3g} vs limit {g['limit']:.3g})"
        print(f"{g['status']:4}  {g['goal']}: {g['measured']}{value}")
    for note in results["notes"]:
        print(f"note  {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, no 10,000-entry root build (~3 min)")
    parser.add_argument("--only", help=f"comma-separated figures among: {', '.join(FIGURES)}")
    parser.add_argument("--against", metavar="REV", help="also measure REV's src/ (hit, run, guest), alternated")
    args = parser.parse_args(argv)
    figures = args.only.split(",") if args.only else list(FIGURES)
    if unknown := set(figures) - set(FIGURES):
        parser.error(f"unknown figure(s): {', '.join(sorted(unknown))}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run `finally`: remove the work directory
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    ctx = Context(quick=args.quick, trees=[current_tree()], say=say)
    results: dict = {"mode": "quick" if args.quick else "full", "machine": machine(), "figures": {}, "notes": []}
    try:
        if args.against:
            ctx.trees.append(extract_tree(args.against, ctx.work / "against"))
            results["against"] = ctx.trees[1].label
        for name in (f for f in FIGURES if f in figures):
            t = time.perf_counter()
            module = importlib.import_module(f"bench.fig_{name}")
            try:
                extra = {"miss": results["figures"].get("miss")} if name == "remote" else {}
                results["figures"][name] = module.measure(ctx, **extra)
            except Exception as exc:  # one failed figure is reported; the others still count
                results["notes"].append(f"{name} failed: {type(exc).__name__}: {str(exc)[-600:]}")
                say(f"{name} FAILED: {exc}")
                continue
            if note := results["figures"][name].get("note"):
                results["notes"].append(f"{name}: {note}")
            say(f"{name} done in {time.perf_counter() - t:.0f} s")
    finally:
        ctx.close()
    results["goals"] = [g for f in results["figures"].values() for g in f.get("goals", [])]
    results["total_s"] = time.perf_counter() - started
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]  # the machine is shared: how busy it was
    stem = "results" + ("-quick" if args.quick else "") + ("-partial" if args.only else "") + \
        (f"-against-{args.against}" if args.against else "")
    out = RESULTS / f"{stem}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out.with_suffix(".png"))
    print_goals(results)
    if not (args.quick or args.only or args.against):
        shutil.copyfile(out, DOCS / "bench-results.json")
        shutil.copyfile(out.with_suffix(".png"), DOCS / "bench.png")
        out = DOCS / "bench-results.json"
    print(f"results: {out} (+ .png), {results['total_s']:.0f} s")
    return 1 if any(" failed: " in n for n in results["notes"]) else 0


if __name__ == "__main__":
    sys.exit(main())
