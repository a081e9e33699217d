"""Nothing wasmcache did not write is ever collected, cleared or reaped; verify tells races from findings.

Found by a new user trying to break it (the outside-reader review of issue 8).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import wasmcache
from conftest import run_cli
from wasmcache._core import lock_path, record_path
from wasmcache._lock import KeyLock
from wasmgen import answer_module

if TYPE_CHECKING:
    from pathlib import Path


def _cache_with_entry(root: Path) -> wasmcache.ModuleCache:
    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(41))
    return cache


def test_clear_and_gc_leave_files_and_directories_they_did_not_write(root: Path) -> None:
    cache = _cache_with_entry(root)
    mine = [cache.namespace_dir / "mine.txt", cache.namespace_dir / "notes.tmp", cache.namespace_dir / "own.cwasm",
            root / "ns-deadbeef" / "q", root / "notes.tmp"]
    for path in mine:
        path.parent.mkdir(exist_ok=True)
        path.write_text("keep")
    gc = run_cli("gc", "--cache-dir", str(root), "--max-size", "0")
    assert gc.returncode == 0, gc.stderr
    assert "reaped 0 temp files" in gc.stdout
    cleared = run_cli("clear", "--cache-dir", str(root))
    assert cleared.returncode == 0, cleared.stderr
    assert all(path.read_text() == "keep" for path in mine)
    assert not list(root.rglob("*.rec"))  # ours went


def test_verify_fix_reports_but_never_moves_a_file_it_did_not_write(root: Path) -> None:
    """An outside reader followed doctor's advice (`verify --fix`), then `clear` deleted quarantine/ and
    the user's notes with it: foreign files are findings, never fixed."""
    cache = _cache_with_entry(root)
    mine = [root / "notes.tmp", cache.namespace_dir / "mine.txt", root / "ns-mine" / "q"]
    for path in mine:
        path.parent.mkdir(exist_ok=True)
        path.write_text("keep")
    for command in (("doctor",), ("verify",), ("verify", "--fix")):
        shown = run_cli(*command, "--cache-dir", str(root))
        assert shown.stdout.count("not wasmcache's, so it is left alone") >= 3, shown.stdout
        assert "moves it into quarantine" not in shown.stdout
    assert all(path.read_text() == "keep" for path in mine)
    assert run_cli("clear", "--cache-dir", str(root)).returncode == 0
    assert run_cli("gc", "--cache-dir", str(root), "--max-size", "0").returncode == 0
    assert all(path.read_text() == "keep" for path in mine)


def test_ls_and_stats_count_only_entries(root: Path) -> None:
    cache = _cache_with_entry(root)
    (cache.namespace_dir / "own.cwasm").write_bytes(b"\x7fELF not ours")
    listing = run_cli("ls", "--cache-dir", str(root))
    assert "own" not in listing.stdout
    assert len(cache.entries()) == 1
    stats = run_cli("stats", "--cache-dir", str(root))
    assert "1 entry" in stats.stdout


def test_verify_leaves_an_entry_that_gc_or_clear_is_removing(root: Path) -> None:
    cache = _cache_with_entry(root)
    key = cache.key_for(answer_module(41))
    holder = KeyLock(lock_path(cache.namespace_dir, key))
    assert holder.acquire(blocking=False)
    try:
        os.unlink(record_path(cache.namespace_dir, key))  # clear removes a key's files in any order
        report = cache.verify(fix=True)
        assert report.findings == []
        assert cache.entry_path(key).exists()
    finally:
        holder.release()
    report = cache.verify()  # nobody holds the key now: an entry without a record is an orphan
    assert [f.problem for f in report.findings] == ["orphan"]


def test_verify_next_to_a_collector_reports_nothing_false(root: Path) -> None:
    cache = wasmcache.ModuleCache(root)
    for i in range(60):
        cache.load(answer_module(200 + i, functions=2))
    collector = subprocess.Popen([sys.executable, "-m", "wasmcache.cli", "gc", "--cache-dir", str(root),
                                  "--max-size", "0"])
    try:
        report = wasmcache.ModuleCache(root).verify()
    finally:
        collector.wait(timeout=120)
    assert report.findings == [], report.findings


REAPED_BEFORE_FLOCK = """
import fcntl, os, sys
from pathlib import Path
real = fcntl.flock
reaped = []
def flock(fd, operation):
    # A collector finds the new temp file before its writer has locked it, and reaps it.
    path = os.readlink(f"/proc/self/fd/{fd}")
    if path.endswith(".tmp") and not reaped:
        reaped.append(path)
        os.unlink(path)
    return real(fd, operation)
fcntl.flock = flock
from wasmcache._core import write_atomically
target = Path(sys.argv[1])
write_atomically(target, b"the whole file")
print(len(reaped), target.read_bytes().decode())
"""


def test_a_temp_file_reaped_before_its_writer_locked_it_is_written_again(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(REAPED_BEFORE_FLOCK), str(tmp_path / "usage")],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.stdout.strip() == "1 the whole file", proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["usage"]


def test_verify_and_doctor_write_nothing_when_disabled(root: Path) -> None:
    _cache_with_entry(root)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    for command in ("verify", "doctor"):
        result = run_cli(command, "--cache-dir", str(root), env={"WASMCACHE_DISABLE": "1"})
        assert result.returncode == 0, result.stdout + result.stderr
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
