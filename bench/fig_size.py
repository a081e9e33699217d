"""Module size: a hit by path of generated modules (one function, a pseudo-random data segment) from
1 KB to 70 MB, against the floor; real code is in the Yosys figures."""

from __future__ import annotations

import os
import random

from bench.harness import Context, clean_hits, goal, interleave, ms, summaries

GOAL = 1.2


def data_module(size: int) -> bytes:
    """A valid module of about `size` bytes: one memory and one data segment of pseudo-random bytes
    (zstd cannot shrink them, a digest must read them all)."""
    def leb(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def section(code: int, body: bytes) -> bytes:
        return bytes([code]) + leb(len(body)) + body

    payload = random.Random(size).randbytes(max(size - 64, 1))
    pages = len(payload) // 65536 + 1
    memory = section(5, b"\x01\x00" + leb(pages))
    data = section(11, b"\x01\x00\x41\x00\x0b" + leb(len(payload)) + payload)
    return b"\0asm\x01\0\0\0" + memory + data


def measure(ctx: Context) -> dict:
    sizes = (1000, 1_000_000, 16_000_000, 70_000_000) if ctx.quick else \
        (1000, 32_000, 1_000_000, 8_000_000, 32_000_000, 70_000_000)
    contenders = {}
    for size in sizes:
        path = ctx.modules / f"data-{size}.wasm"
        if not path.exists():
            ctx.modules.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".tmp").write_bytes(data_module(size))
            os.replace(path.with_suffix(".tmp"), path)
        p = ctx.prepare(path, cfgcache=False)
        contenders |= {f"{size}/floor": p.load("floor", ctx.head), f"{size}/wc_path": p.load("wc_path", ctx.head)}
    rounds = ctx.rounds(5, 11)
    ctx.say(f"size: {len(contenders)} module x contender pairs x {rounds}")
    load = summaries(interleave(contenders, rounds, check=clean_hits("size")))
    lo, hi = load[f"{sizes[0]}/wc_path"]["median"], load[f"{sizes[-1]}/wc_path"]["median"]
    return {"sizes": sizes, "load_s": load,
            "goals": [goal("hit by path flat in module size (1 KB -> 70 MB within 1.2x)", hi / lo, GOAL,
                           f"{ms(lo)} -> {ms(hi)}; floor {ms(load[f'{sizes[0]}/floor']['median'])} -> "
                           f"{ms(load[f'{sizes[-1]}/floor']['median'])}")]}
