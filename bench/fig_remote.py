"""Remote tier: a local miss served from S3 (a real SeaweedFS server on 127.0.0.1, `tests/s3server.py`) in a
fresh process on a brand-new root, client set-up, GET, signature and digest checks, local publish and map
inside the clock, against a compile (the miss figure's median when it ran, else the preparation's)."""

from __future__ import annotations

import itertools
import json
import sys
import time

from bench import harness as h

GOAL = 1 / 8
BUCKET = "wasmcache-bench"


def measure(ctx: h.Context, miss: dict | None = None) -> dict:
    sys.path.append(str(h.REPO / "tests"))  # appended: nothing in tests/ shadows an installed module
    from s3server import S3Server

    p = ctx.prepare(h.yosys_wasm())
    server = S3Server(ctx.work / "s3")
    started = time.perf_counter()
    server.start()
    try:
        server.create_bucket(BUCKET)
        keys = ctx.work / "keys"
        env = server.subprocess_env(p.load("remote", ctx.head)[1])
        h.sample(([*h.wasmcache_cli(), "keygen", "--out", str(keys)], env))
        remote = {"remote": f"s3://{BUCKET}/yosys", "trusted_key": str(keys / "wasmcache-signing.pub")}
        counter = itertools.count()

        def empty_root(**extra: str):
            return p.load("remote", ctx.head, root=str(ctx.work / f"remote-{next(counter)}"), **remote, **extra)[0], env

        ctx.say("remote: publishing Yosys once (compile, sign, upload)")
        published = h.sample(empty_root(signing_key=str(keys / "wasmcache-signing.pem")))
        if published["compiles"] != 1 or published["uploads"] != 1:
            raise h.BenchError(f"remote: the publish did not compile and upload once: {json.dumps(published)}")

        def check(name: str, r: dict) -> None:
            if name == "remote" and (r["remote_hits"] != 1 or r["compiles"] or r["rejected"]):
                raise h.BenchError(f"remote: not a clean remote hit: {json.dumps(r)}")

        rounds = ctx.rounds(5, 9)
        ctx.say(f"remote: remote hit on an empty root vs a local hit x {rounds}")
        local = (p.load("wc_path", ctx.head)[0], env)
        load = h.summaries(h.interleave({"remote": empty_root, "wc_path": local}, rounds, check=check))
    finally:
        server.stop()
    compile_s = miss["load_s"]["compile"]["median"] if miss else p.setup["compile_s"]
    hit = load["remote"]["median"]
    return {"load_s": load, "server_start_s": time.perf_counter() - started, "compile_s": compile_s,
            "compile_from": "miss figure (median)" if miss else "preparation (1 compile)",
            "goals": [h.goal("remote hit (empty root, fresh process) <= 1/8 of a compile (49 MB Yosys)",
                             hit / compile_s, GOAL,
                             f"{h.ms(hit)} vs {h.ms(compile_s)} = {h.ratio_text(hit / compile_s)}")]}
