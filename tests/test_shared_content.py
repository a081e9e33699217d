"""Identical content is stored once: a YoWASP-style program's own file shares the entry it came from.

YoWASP compiles `Module(engine, wasm)` on a miss (served by the drop-in: an entry), then writes
`module.serialize()` to its own cache file and `deserialize_file`s it (the drop-in snapshots it: a
second entry with the very same bytes). The snapshot becomes a second name of the entry's inode, and
gc, verify, `ls`, `stats` and the usage record count those bytes once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import wasmtime

import wasmcache
from conftest import run_cli, run_python
from wasmgen import answer_module

# A YoWASP-style program: its own cache, keyed by sha1 of the wasm, rewritten with open("wb").
YOWASP_STYLE = """
import hashlib, os, sys, wasmtime
from wasmgen import call_answer
wasm = open(sys.argv[1], "rb").read()
own = os.path.join(sys.argv[2], hashlib.sha1(wasm).hexdigest())
engine = wasmtime.Engine()
if os.path.exists(own):
    module = wasmtime.Module.deserialize_file(engine, own)
else:
    module = wasmtime.Module(engine, wasm)
    os.makedirs(sys.argv[2], exist_ok=True)
    with open(own, "wb") as f:
        f.write(module.serialize())
    module = wasmtime.Module.deserialize_file(engine, own)
print(call_answer(engine, module))
"""


def _entries(root: Path) -> list[os.stat_result]:
    return [p.stat() for p in root.glob("ns-*/*.cwasm")]


def _run_wrapped(tmp_path: Path, root: Path, wasm: Path, own: Path) -> str:
    env = {**os.environ, "WASMCACHE_DIR": str(root), "PYTHONPATH": str(Path(__file__).parent)}
    program = tmp_path / "tool.py"
    program.write_text(YOWASP_STYLE)
    proc = subprocess.run([sys.executable, "-m", "wasmcache.cli", "exec", sys.executable, str(program), str(wasm),
                           str(own)], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_programs_own_copy_of_an_entry_shares_its_inode(tmp_path: Path) -> None:
    root, own = tmp_path / "root", tmp_path / "own-cache"
    wasm = tmp_path / "tool.wasm"
    wasm.write_bytes(answer_module(61))
    assert _run_wrapped(tmp_path, root, wasm, own) == "61"
    entries = _entries(root)
    assert len(entries) == 2  # the compiled entry and the snapshot of the program's own file ...
    assert len({(st.st_dev, st.st_ino) for st in entries}) == 1  # ... one inode
    assert all(st.st_nlink == 2 for st in entries)
    # Later runs: the program maps its own file; the drop-in maps the shared entry, unchanged.
    assert _run_wrapped(tmp_path, root, wasm, own) == "61"
    assert {(st.st_ino, st.st_nlink) for st in _entries(root)} == {(entries[0].st_ino, 2)}

    cache = wasmcache.ModuleCache(root)
    report = cache.verify()
    assert report.ok, report.findings
    assert report.intact == 2
    entry_bytes = entries[0].st_size
    stats = cache.stats()  # the usage record, exact after verify
    assert stats.entries == 2
    assert entry_bytes < stats.size_bytes < 2 * entry_bytes  # the shared bytes counted once
    listed = run_cli("ls", "--json", "--cache-dir", str(root))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count('"key"') == 2, listed.stdout
    doctor = run_cli("doctor", "--cache-dir", str(root))
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr


def test_gc_frees_a_shared_inodes_bytes_only_with_its_last_name(tmp_path: Path) -> None:
    root, own = tmp_path / "root", tmp_path / "own-cache"
    wasm = tmp_path / "tool.wasm"
    wasm.write_bytes(answer_module(62))
    _run_wrapped(tmp_path, root, wasm, own)
    entry_bytes = _entries(root)[0].st_size
    cache = wasmcache.ModuleCache(root)
    before = cache.gc()  # nothing to evict: the exact usage, the shared inode counted once
    assert before.entries == 2
    assert before.evicted_entries == 0
    assert entry_bytes < before.size_bytes < 2 * entry_bytes
    after = cache.gc(max_size=1)
    assert after.evicted_entries == 2
    assert not _entries(root)
    assert entry_bytes <= after.freed_bytes < 2 * entry_bytes  # the bytes once, plus the two records


def test_a_module_loaded_from_the_first_name_survives_the_second_names_eviction(tmp_path: Path) -> None:
    # Two keys on one inode: evicting or quarantining one name never touches what the other maps.
    root = tmp_path / "root"
    cache = wasmcache.ModuleCache(root)
    module = cache.load(answer_module(63))
    own = tmp_path / "own.cwasm"
    own.write_bytes(module.serialize())
    snapshot = cache.load_precompiled(own)
    stats = _entries(root)
    assert len(stats) == 2
    assert stats[0].st_ino == stats[1].st_ino
    cache.clear()
    assert not _entries(root)
    for loaded in (module, snapshot):  # both still run from the unlinked inode
        store = wasmtime.Store(cache.engine)
        assert wasmtime.Instance(store, loaded, []).exports(store)["answer"](store) == 63


def test_an_entry_whose_record_does_not_vouch_for_it_is_never_shared(tmp_path: Path) -> None:
    # The twin must be the very file that was published (identity as recorded): a copied-in file
    # with a forged record gets its own copy written instead.
    root = tmp_path / "root"
    run_python("""
import sys, wasmcache
from wasmgen import answer_module
cache = wasmcache.ModuleCache(sys.argv[1])
module = cache.load(answer_module(64))
open(sys.argv[2], "wb").write(module.serialize())
""", str(root), str(tmp_path / "own.cwasm"))
    (entry,) = root.glob("ns-*/*.cwasm")
    copy = entry.with_name("copy.tmp-not-ours")
    copy.write_bytes(entry.read_bytes())
    os.replace(copy, entry)  # same bytes, another inode: its record's identity no longer matches
    cache = wasmcache.ModuleCache(root)
    cache.load_precompiled(tmp_path / "own.cwasm")
    inodes = {p.stat().st_ino for p in root.glob("ns-*/*.cwasm")}
    assert len(inodes) == 2
