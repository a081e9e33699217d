"""A root baked into an image, whose files were copied (new inodes, new ctimes): on a read-only mount every
process verifies its entries by content and says so truly, instead of claiming to record what it cannot."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import wasmtime

from conftest import remount_read_only

if TYPE_CHECKING:
    from pathlib import Path

LOAD = """
import sys, wasmcache, logging
logging.basicConfig(level=logging.INFO, format="%(message)s")
cache = wasmcache.ModuleCache(sys.argv[1])
cache.load(sys.argv[2])
print(cache.stats().hits, cache.stats().compiles)
"""


def test_a_copied_read_only_root_is_verified_by_content_and_says_it_cannot_record(tmpfs: Path, tmp_path: Path) -> None:
    wasm = tmp_path / "f.wasm"
    wasm.write_bytes(wasmtime.wat2wasm('(module (func (export "f") (result i32) i32.const 5))'))
    built = tmp_path / "built"
    first = subprocess.run([sys.executable, "-c", LOAD, str(built), str(wasm)], capture_output=True, text=True,
                           check=True, timeout=120)
    assert first.stdout.split() == ["0", "1"]
    subprocess.run(["cp", "-a", str(built), str(tmpfs / "cache")], check=True)  # an image layer: new inodes
    remount_read_only(tmpfs)
    for _ in range(2):
        again = subprocess.run([sys.executable, "-c", LOAD, str(tmpfs / "cache"), str(wasm)], capture_output=True,
                               text=True, check=True, timeout=120)
        assert again.stdout.split() == ["1", "0"], again.stderr
        assert "content verified (a read-only root cannot record" in again.stderr
        assert "re-recorded" not in again.stderr
