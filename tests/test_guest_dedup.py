"""Identical content is stored once whichever came first, and a refused snapshot touches nothing.

The compile-then-snapshot order is tests/test_shared_content.py. Here the other order: a program's
own cache file already there (an unwrapped run wrote it) is snapshotted first, and a later compile
of the same wasm by the same engine makes those very bytes again: they become a second name of the
snapshot's inode. And two engines sharing one program file (two wasmtime versions, here Cranelift
and Winch): the one whose engine refuses the other's artifact must not link, nor otherwise touch,
the entry that holds its bytes, whose recorded identity (ctime included) lets the next hit skip
hashing it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import wasmtime

import wasmcache
from conftest import run_cli
from naive import winch_engine
from wasmgen import answer_module, call_answer

TESTS = str(Path(__file__).parent)

# YoWASP's own cache: on a miss compile `Module(engine, wasm)`, use it and write `serialize()` to its
# file; later runs `deserialize_file` that file, and an artifact their engine refuses (another
# wasmtime wrote it) is compiled again and the file rewritten. argv: wasm, own file, engine.
YOWASP_STYLE = """
import os, sys, wasmtime
from naive import winch_engine
from wasmgen import call_answer
wasm_path, own, which = sys.argv[1:4]
engine = winch_engine() if which == "winch" else wasmtime.Engine()
module = None
if os.path.exists(own):
    try:
        module = wasmtime.Module.deserialize_file(engine, own)
    except wasmtime.WasmtimeError:
        module = None
if module is None:
    module = wasmtime.Module(engine, open(wasm_path, "rb").read())
    with open(own, "wb") as f:
        f.write(module.serialize())
print(call_answer(engine, module))
"""


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASMCACHE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))
    env["WASMCACHE_DIR"] = str(root)
    env.update(extra)
    return env


def _tool(tmp_path: Path, root: Path, own: Path, engine: str, *,
          wrapped: bool = True) -> subprocess.CompletedProcess[str]:
    program = tmp_path / "tool.py"
    if not program.exists():
        program.write_text(YOWASP_STYLE)
    argv = [sys.executable, str(program), str(tmp_path / "tool.wasm"), str(own), engine]
    if wrapped:
        argv = [sys.executable, "-m", "wasmcache.cli", "-v", "exec", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, env=_env(root), timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc


def _entries(root: Path) -> dict[str, os.stat_result]:
    return {p.name: p.stat() for p in root.glob("ns-*/*.cwasm")}


def _identities(root: Path) -> dict[str, tuple[int, int, int, int]]:
    return {name: (st.st_ino, st.st_nlink, st.st_mtime_ns, st.st_ctime_ns) for name, st in _entries(root).items()}


def _assert_stored_once(root: Path) -> None:
    """Two names, one inode, and every account of the root counts its bytes once."""
    entries = _entries(root)
    assert len(entries) == 2, entries
    assert len({(st.st_dev, st.st_ino) for st in entries.values()}) == 1
    assert all(st.st_nlink == 2 for st in entries.values())
    entry_bytes = next(iter(entries.values())).st_size
    cache = wasmcache.ModuleCache(root)
    report = cache.verify()
    assert report.ok, report.findings
    assert report.intact == 2
    stats = cache.stats()  # the usage record, exact after verify
    assert stats.entries == 2
    assert entry_bytes < stats.size_bytes < 2 * entry_bytes
    listed = run_cli("ls", "--json", "--cache-dir", str(root))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count('"key"') == 2, listed.stdout
    shown = run_cli("stats", "--json", "--cache-dir", str(root))
    origins = json.loads(shown.stdout)["origins"]
    assert sum(o["entries"] for o in origins) == 2, origins
    assert sum(o["size_bytes"] for o in origins) == entry_bytes, origins  # by origin too, the bytes count once
    assert sum(o["sharing"] for o in origins) == 1, origins  # and the entry whose bytes are the other's says so
    text = run_cli("stats", "--cache-dir", str(root)).stdout
    assert "1 shares another entry's file" in text, text  # never a bare "(0 B)" for a 2-entry root
    collected = cache.gc()
    assert (collected.entries, collected.evicted_entries) == (2, 0)
    assert entry_bytes < collected.size_bytes < 2 * entry_bytes


# --- snapshot first, then a compile of the same bytes -------------------------------------------------


def test_a_compile_after_a_snapshot_of_its_bytes_shares_the_snapshots_inode(tmp_path: Path) -> None:
    root = tmp_path / "root"
    own = tmp_path / "own.cwasm"
    own.write_bytes(wasmtime.Module(wasmtime.Engine(), answer_module(71)).serialize())  # an unwrapped compile
    cache = wasmcache.ModuleCache(root)
    snapshot = cache.load_precompiled(own)
    (first,) = _entries(root).values()
    usage_before = cache.stats().size_bytes
    module = cache.load(answer_module(71))  # compiles (a miss): the very bytes of the snapshot
    assert cache.stats().compiles == 1
    record = cache.entry_path(cache.key_for(answer_module(71))).with_suffix(".rec")
    # Counted up by the publication: its record only, no new entry bytes.
    assert cache.stats().size_bytes == usage_before + record.stat().st_size
    assert {st.st_ino for st in _entries(root).values()} == {first.st_ino}
    for loaded in (snapshot, module):
        assert call_answer(cache.engine, loaded) == 71
    _assert_stored_once(root)
    # Both names are hits afterwards, by their recorded identity (no content check, no re-record).
    again = wasmcache.ModuleCache(root)
    before = _identities(root)
    assert call_answer(again.engine, again.load(answer_module(71))) == 71
    assert call_answer(again.engine, again.load_precompiled(own)) == 71
    assert again.stats().hits == 2
    assert _identities(root) == before


def test_under_the_drop_in_a_compile_after_the_snapshot_of_its_own_file_is_stored_once(tmp_path: Path) -> None:
    # The tester's order: the program's own file is there from an unwrapped run, so the first wrapped
    # run only maps it (a snapshot); later a run whose file is gone compiles the same wasm.
    root = tmp_path / "root"
    own = tmp_path / "own.cwasm"
    (tmp_path / "tool.wasm").write_bytes(answer_module(72))
    assert _tool(tmp_path, root, own, "cranelift", wrapped=False).stdout.strip() == "72"
    assert not root.exists()
    first = _tool(tmp_path, root, own, "cranelift")
    assert first.stdout.strip() == "72"
    assert "]: snapshot of" in first.stderr
    assert "]: compiled" not in first.stderr
    own.unlink()
    second = _tool(tmp_path, root, own, "cranelift")
    assert second.stdout.strip() == "72"
    assert "]: compiled" in second.stderr, second.stderr
    _assert_stored_once(root)


# --- a snapshot this engine refuses -------------------------------------------------------------------


def test_a_refused_snapshot_leaves_the_entry_with_its_bytes_untouched(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "root"
    own = tmp_path / "own.cwasm"
    winch = wasmcache.ModuleCache(root, engine=winch_engine())
    own.write_bytes(winch.load(answer_module(73)).serialize())  # the entry's very bytes
    before = _identities(root)
    cranelift = wasmcache.ModuleCache(root)
    with caplog.at_level(logging.INFO, logger="wasmcache"), pytest.raises(wasmcache.CompileError) as refused:
        cranelift.load_precompiled(own)
    assert isinstance(refused.value.wasmtime_error, wasmtime.WasmtimeError)
    assert _identities(root) == before  # no link, no unlink: the inode's ctime is what its record holds
    said = [r.getMessage() for r in caplog.records]
    assert any("not taken" in line for line in said), said
    assert not any("taken (" in line for line in said), said
    assert not any("/fd/" in line for line in said), said  # the file's name, never our descriptor's
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wasmcache"):
        again = wasmcache.ModuleCache(root, engine=winch_engine())
        assert call_answer(again.engine, again.load(answer_module(73))) == 73
    assert again.stats().hits == 1
    assert not any("moved or copied" in r.getMessage() for r in caplog.records)
    assert wasmcache.ModuleCache(root).verify().ok


def test_two_engines_alternating_on_one_own_file_never_reverify_their_entries(tmp_path: Path) -> None:
    # Two wasmtime versions (here Cranelift and Winch) sharing a YoWASP-style program's own file: each
    # run maps the other's artifact, is refused, compiles (a hit) and rewrites the file.
    root = tmp_path / "root"
    own = tmp_path / "own.cwasm"
    (tmp_path / "tool.wasm").write_bytes(answer_module(74))
    runs = [_tool(tmp_path, root, own, engine) for engine in ("winch", "cranelift", "winch", "cranelift", "winch")]
    assert [p.stdout.strip() for p in runs] == ["74"] * 5
    for i, proc in enumerate(runs[1:], 1):  # each hit is a stat and a map, never a hash of the entry
        assert "moved or copied" not in proc.stderr, (i, proc.stderr)
    for i, proc in enumerate(runs[1:], 1):
        assert "taken" not in proc.stderr.replace("not taken", ""), (i, proc.stderr)  # nothing was
        assert "not taken" in proc.stderr, (i, proc.stderr)
    for proc in runs[2:]:
        assert "]: compiled" not in proc.stderr  # each engine's compile is a hit from its second run on
    entries = _entries(root)
    assert len(entries) == 2  # one compile per engine; no snapshot was stored
    assert all(st.st_nlink == 1 for st in entries.values())
    assert wasmcache.ModuleCache(root).verify().ok
