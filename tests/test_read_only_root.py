"""A root baked into an image, whose files were copied (new inodes, new ctimes): on a read-only mount every
process verifies its entries by content and says so truly, instead of claiming to record what it cannot."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import wasmtime

from conftest import remount_read_only, run_cli

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
        assert "content verified (its namespace cannot be written, so its new identity is not recorded" in again.stderr
        assert "re-recorded" not in again.stderr


def test_a_damaged_entry_of_a_read_only_root_gets_advice_that_can_work(tmpfs: Path, tmp_path: Path) -> None:
    # Found by an outside reader: on a read-only root, doctor and `verify --fix` itself advised `verify --fix`
    # for a damaged entry, which can set nothing aside there ("0 quarantined", no reason), and each load said
    # it was "setting it aside". Both now say what a load does there and where the fix works.
    wasm = tmp_path / "f.wasm"
    wasm.write_bytes(wasmtime.wat2wasm('(module (func (export "f") (result i32) i32.const 6))'))
    subprocess.run([sys.executable, "-c", LOAD, str(tmpfs / "cache"), str(wasm)], check=True, timeout=120,
                   capture_output=True)
    entry = next((tmpfs / "cache").glob("ns-*/*.cwasm"))
    entry.chmod(0o644)
    with entry.open("r+b") as f:
        f.seek(entry.stat().st_size // 2)
        f.write(b"XXXX")
    remount_read_only(tmpfs)
    for command in ("doctor", "verify"):
        said = run_cli("--cache-dir", str(tmpfs / "cache"), command, *(["--fix"] if command == "verify" else []))
        assert "cannot be written (a read-only mount" in said.stdout, said
        assert "run `wasmcache verify --fix` where the root can be written" in said.stdout
    again = subprocess.run([sys.executable, "-c", LOAD, str(tmpfs / "cache"), str(wasm)], capture_output=True,
                           text=True, check=True, timeout=120)
    assert again.stdout.split() == ["0", "1"]
    assert "compiling it in memory (it cannot be set aside: its directory cannot be written" in again.stderr
    assert "setting it aside" not in again.stderr
