"""A root baked into an image, whose files were copied (new inodes, new ctimes): on a read-only mount every
process verifies its entries by content and says so truly, instead of claiming to record what it cannot."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
import wasmtime

if TYPE_CHECKING:
    from pathlib import Path

LOAD = """
import sys, wasmcache, logging
logging.basicConfig(level=logging.INFO, format="%(message)s")
cache = wasmcache.ModuleCache(sys.argv[1])
cache.load(sys.argv[2])
print(cache.stats().hits, cache.stats().compiles)
"""


def test_a_copied_read_only_root_is_verified_by_content_and_says_it_cannot_record(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "image"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        wasm = tmp_path / "f.wasm"
        wasm.write_bytes(wasmtime.wat2wasm('(module (func (export "f") (result i32) i32.const 5))'))
        built = tmp_path / "built"
        first = subprocess.run([sys.executable, "-c", LOAD, str(built), str(wasm)], capture_output=True, text=True,
                               check=True, timeout=120)
        assert first.stdout.split() == ["0", "1"]
        subprocess.run(["cp", "-a", str(built), str(mount / "cache")], check=True)  # an image layer: new inodes
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        for _ in range(2):
            again = subprocess.run([sys.executable, "-c", LOAD, str(mount / "cache"), str(wasm)], capture_output=True,
                                   text=True, check=True, timeout=120)
            assert again.stdout.split() == ["1", "0"], again.stderr
            assert "content verified (a read-only root cannot record" in again.stderr
            assert "re-recorded" not in again.stderr
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
