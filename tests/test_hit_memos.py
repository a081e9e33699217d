"""A hit by path hashes nothing: what it needs is remembered (issue 14, item 7).

The input's digest (by the file's identity), the key made of it and the engine's fingerprint are kept in
small memo files under the root, each named by `memo_file_name` (the remembered text as a number modulo a
prime: no hash library, so `import blake3` stays off a hit's path) and believed only when the whole text
it holds matches. These tests run real processes on one root: what one process remembered, the next reads.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest
import wasmtime

from conftest import run_cli, run_json
from wasmcache import _maintenance
from wasmcache._core import ENGINES_DIR, Identity, memo_file_name, memo_key_for
from wasmgen import answer_module

if TYPE_CHECKING:
    from pathlib import Path

# A fresh process loading a file by path with the default engine, or wasmtime's settings at opt_level 0
# (an engine wasmtime itself would hand the default engine's code to): what it computed, compiled, where
# its entries live, and whether it imported a hash library.
PATH_LOAD = """
import json, sys, wasmtime, wasmcache
from wasmcache import EngineSettings
from wasmgen import call_answer
root, engine_kind, path = sys.argv[1], sys.argv[2], sys.argv[3]
cache = wasmcache.ModuleCache(root, engine=EngineSettings(opt_level="0") if engine_kind == "opt0" else None)
module = cache.load_precompiled(path) if engine_kind == "precompiled" else cache.load(path)
hashed = "blake3" in sys.modules  # before key_for, which derives the key itself
stats = cache.stats()
print(json.dumps({"answer": call_answer(cache.engine, module), "hits": stats.hits, "compiles": stats.compiles,
                  "namespace": cache.namespace_dir.name, "fingerprint": cache.engine_identity.fingerprint,
                  "key": None if engine_kind == "precompiled" else cache.key_for(path), "hashed": hashed}))
"""


def load(root: Path, engine_kind: str, path: Path) -> dict[str, object]:
    result: dict[str, object] = run_json(PATH_LOAD, str(root), engine_kind, str(path))
    return result


def wasm_file(tmp_path: Path, name: str, answer: int) -> Path:
    path = tmp_path / name
    path.write_bytes(answer_module(answer))
    return path


def digest_memo(root: Path, path: Path) -> Path:
    return root / "digests" / memo_file_name(f"wasm:{':'.join(map(str, Identity.of(os.stat(path))))}")


def key_memo(root: Path, fingerprint: str, digest: str) -> Path:
    return root / "digests" / memo_file_name(f"cache_key:{fingerprint}:module:{digest}")


def test_a_hit_by_path_imports_no_hash_library(root: Path, tmp_path: Path) -> None:
    wasm = wasm_file(tmp_path, "a module.wasm", 31)
    assert load(root, "default", wasm)["compiles"] == 1
    hit = load(root, "default", wasm)
    assert (hit["answer"], hit["hits"], hit["compiles"], hit["hashed"]) == (31, 1, 0, False)
    # A program's own serialized file (what the drop-in's deserialize_file snapshots): the same.
    cwasm = tmp_path / "own [cache].cwasm"
    cwasm.write_bytes(wasmtime.Module(wasmtime.Engine(), answer_module(32)).serialize())
    first = load(root, "precompiled", cwasm)
    assert (first["answer"], first["hits"]) == (32, 0)
    again = load(root, "precompiled", cwasm)
    assert (again["answer"], again["hits"], again["hashed"]) == (32, 1, False)
    # Control: a load of bytes hashes them (and only a path's digest can be remembered).
    code = ("import json, sys, wasmcache; wasmcache.ModuleCache(sys.argv[1]).load(open(sys.argv[2], 'rb').read()); "
            "print(json.dumps('blake3' in sys.modules))")
    assert run_json(code, str(root), str(wasm)) is True


def test_one_file_under_two_engines_gets_each_engines_own_key_through_the_memos(root: Path,
                                                                                   tmp_path: Path) -> None:
    # A key memo spelled without the fingerprint would hand the second engine the first one's key: the miss
    # then derives its own (mutant `miss-derives-its-key`) and corrects the memo.
    wasm = wasm_file(tmp_path, "m.wasm", 41)
    default = load(root, "default", wasm)
    other = load(root, "opt0", wasm)
    assert (default["compiles"], other["compiles"]) == (1, 1)
    assert default["namespace"] != other["namespace"]
    assert default["key"] != other["key"]
    for result in (default, other):  # each entry under the key its engine derives (key_for: no memo)
        assert (root / str(result["namespace"]) / f"{result['key']}.cwasm").is_file()
    for kind, expected in (("default", default), ("opt0", other)):
        again = load(root, kind, wasm)
        assert (again["answer"], again["hits"], again["compiles"], again["namespace"]) == (
            41, 1, 0, expected["namespace"])


def test_a_memo_file_holding_another_texts_value_is_not_believed(root: Path, tmp_path: Path) -> None:
    # Breakage: believe a memo without comparing the text it holds (mutant `memo-text-unchecked`): a file's
    # name collision (or a memo moved under another name) would hand one input another's digest or key,
    # so its load would map the other module.
    first, second = wasm_file(tmp_path, "first.wasm", 51), wasm_file(tmp_path, "second.wasm", 52)
    loaded = {path: load(root, "default", path) for path in (first, second)}
    assert [result["answer"] for result in loaded.values()] == [51, 52]
    digest_memo(root, first).write_bytes(digest_memo(root, second).read_bytes())
    result = load(root, "default", first)
    assert (result["answer"], result["hits"], result["compiles"]) == (51, 1, 0)
    # The key, likewise: the first file's key memo given the second one's key.
    fingerprint = str(result["fingerprint"])
    digests = [json.loads((root / str(r["namespace"]) / f"{r['key']}.rec").read_bytes())["wasm_digest"]
               for r in loaded.values()]
    mine, theirs = (key_memo(root, fingerprint, digest) for digest in digests)
    assert mine.is_file()
    assert theirs.is_file()
    mine.write_bytes(theirs.read_bytes())
    result = load(root, "default", first)
    assert (result["answer"], result["hits"], result["compiles"]) == (51, 1, 0)


def test_an_engine_memo_holding_other_settings_is_not_believed(root: Path, tmp_path: Path) -> None:
    # Breakage: believe an engine memo without comparing the settings it holds (mutant
    # `engine-memo-unchecked`): the default engine would take another configuration's fingerprint and
    # map that configuration's entries (wasmtime itself accepts opt_level 0 code in a default engine).
    wasm = wasm_file(tmp_path, "m.wasm", 61)
    default = load(root, "default", wasm)
    other = load(root, "opt0", wasm)
    memos = sorted((root / ENGINES_DIR).glob("*.engine"))
    assert len(memos) == 2
    default_memo = root / ENGINES_DIR / f"{memo_file_name(memo_key_for('wasmtime.Engine()'))}.engine"
    foreign = next(p for p in memos if p != default_memo)
    default_memo.write_bytes(foreign.read_bytes())
    result = load(root, "default", wasm)
    assert (result["answer"], result["namespace"], result["hits"]) == (61, default["namespace"], 1)
    assert result["namespace"] != other["namespace"]


OWN_ENTRY = """
import json, os, sys, wasmtime
entry, link = sys.argv[1], sys.argv[2]
engine = wasmtime.Engine()
for path in (entry, link):
    wasmtime.Module.deserialize_file(engine, path)
import wasmcache._dropin as dropin
print(json.dumps(dropin._active.counts()))
"""


def test_deserialize_file_of_one_of_our_entries_maps_it_as_it_is_by_its_name_or_a_link(root: Path,
                                                                                      tmp_path: Path) -> None:
    # An entry is published once and replaced only by rename: the drop-in maps it as it is (no snapshot of
    # it), whether the program names it or a symlink to it under any name. The drop-in tells an entry by one
    # lstat of a name that is not an entry's (`DropIn.owns`); a link is followed to the end.
    wasm = wasm_file(tmp_path, "m.wasm", 71)
    assert load(root, "default", wasm)["compiles"] == 1
    (entry,) = root.glob("ns-*/*.cwasm")
    link = tmp_path / "program's own [copy].cwasm"
    link.symlink_to(entry)
    env = {**os.environ, "WASMCACHE_AUTO": "1", "WASMCACHE_DIR": str(root)}
    counts = run_json(OWN_ENTRY, str(entry), str(link), env=env)
    assert counts == dict.fromkeys(counts, 0)  # neither a hit nor a miss: wasmtime's own map of our entry
    assert list(root.glob("ns-*/*.cwasm")) == [entry]
    # Control: a copy of the entry is the program's own file (it may rewrite it): snapshotted, as any.
    copy = tmp_path / "copy.cwasm"
    copy.write_bytes(entry.read_bytes())
    counts = run_json(OWN_ENTRY, str(copy), str(copy), env=env)
    assert counts["hits"] + counts["misses"] == 2


COUNTED_LOAD = """
import json, sys, wasmcache, wasmcache._core as core
from wasmgen import call_answer
reads = []
original = core.read_input
core.read_input = lambda *args: reads.append(args) or original(*args)
cache = wasmcache.ModuleCache(sys.argv[1])
module = cache.load(sys.argv[2])
print(json.dumps({"answer": call_answer(cache.engine, module), "hits": cache.stats().hits, "reads": len(reads)}))
"""


def test_a_digest_memo_an_older_version_wrote_is_read_and_renamed(root: Path, tmp_path: Path) -> None:
    # Versions before 2026-12-04 named a digest memo by the blake3 of the file's identity (a root they filled,
    # a read-only image's above all, must not be digested again in every process).
    import blake3

    wasm = wasm_file(tmp_path, "m.wasm", 81)
    assert load(root, "default", wasm)["compiles"] == 1
    memo = digest_memo(root, wasm)
    digest = memo.read_bytes().split(b" ")[1]
    memo.unlink()
    text = ":".join(map(str, Identity.of(os.stat(wasm))))
    name = blake3.blake3(text.encode()).hexdigest()
    (root / "digests" / name[:32]).write_bytes(name[32:48].encode() + b" " + digest)
    result = run_json(COUNTED_LOAD, str(root), str(wasm))
    assert result == {"answer": 81, "hits": 1, "reads": 0}
    assert memo.read_bytes().split(b" ")[1] == digest  # remembered under today's name
    # Control: with neither memo the input is read again (and its digest remembered anew).
    memo.unlink()
    (root / "digests" / name[:32]).unlink()
    assert run_json(COUNTED_LOAD, str(root), str(wasm)) == {"answer": 81, "hits": 1, "reads": 1}


def test_a_fifo_where_a_file_of_ours_belongs_never_hangs_a_load(root: Path, tmp_path: Path) -> None:
    # Every file a load opens is opened without blocking (O_NONBLOCK) and used only if it is a regular file:
    # a FIFO would otherwise hold the open until some writer came (found by an outside reader: a FIFO in
    # place of a memo, a record, an entry or ROOT/usage hung every load).
    wasm = wasm_file(tmp_path, "m.wasm", 91)
    assert load(root, "default", wasm)["compiles"] == 1
    ours = [*root.glob("digests/*"), *root.glob("engines/*.engine"), *root.glob("ns-*/*.rec"),
            *root.glob("ns-*/*.cwasm"), root / "usage"]
    for path in ours:
        path.unlink()
        os.mkfifo(path)
    result = run_json(PATH_LOAD, str(root), "default", str(wasm), timeout=20)
    assert result["answer"] == 91


def test_a_key_memo_naming_another_inputs_key_neither_serves_nor_poisons(root: Path, tmp_path: Path) -> None:
    # Found by an outside reader: a key memo that named another input's key made a miss publish this input's
    # code under that key, for good (and `verify` could not tell). A hit now needs the entry's record to name
    # the input's digest, and a miss derives its key again before anything is compiled or published.
    first, second = wasm_file(tmp_path, "first.wasm", 101), wasm_file(tmp_path, "second.wasm", 102)
    loaded = {path: load(root, "default", path) for path in (first, second)}
    fingerprint = str(loaded[first]["fingerprint"])
    digests = {p: json.loads((root / str(r["namespace"]) / f"{r['key']}.rec").read_bytes())["wasm_digest"]
               for p, r in loaded.items()}
    mine = key_memo(root, fingerprint, digests[first])
    lie = mine.read_bytes().rsplit(b" ", 1)[0] + b" " + str(loaded[second]["key"]).encode()
    mine.write_bytes(lie)  # the second input's entry exists: a hit under the lie would serve it
    result = load(root, "default", first)
    assert (result["answer"], result["hits"], result["compiles"]) == (101, 1, 0)
    assert mine.read_bytes().endswith(str(loaded[first]["key"]).encode())  # corrected
    (root / str(loaded[first]["namespace"]) / f"{loaded[second]['key']}.cwasm").unlink()  # a miss under the lie
    mine.write_bytes(lie)
    assert load(root, "default", first)["answer"] == 101
    assert load(root, "default", second)["answer"] == 102  # recompiled under its own key, its own code
    assert run_json("import json, sys, wasmcache; print(json.dumps(wasmcache.ModuleCache(sys.argv[1]).verify().ok))",
                    str(root)) is True


def test_a_digest_memo_naming_another_digest_heals_at_the_first_miss(root: Path, tmp_path: Path) -> None:
    # Found by an outside reader: a damaged digest memo (the file unchanged) made every load of that file fail
    # with "changed while being loaded; try again", for good. The miss path's read shows the memo wrong: it
    # is forgotten, and the load asked once more.
    wasm = wasm_file(tmp_path, "m.wasm", 111)
    assert load(root, "default", wasm)["compiles"] == 1
    memo = digest_memo(root, wasm)
    text, digest = memo.read_bytes().split(b" ")
    memo.write_bytes(text + b" " + bytes(reversed(digest)))
    result = load(root, "default", wasm)
    assert (result["answer"], result["hits"], result["compiles"]) == (111, 1, 0)
    assert memo.read_bytes() == text + b" " + digest


STRICT_LOAD = """
import json, logging, sys, wasmcache
from wasmgen import call_answer
warnings = []
logging.getLogger("wasmcache").addHandler(type("H", (logging.Handler,), {"emit": lambda self, r: warnings.append(
    r.getMessage()) if r.levelno >= logging.WARNING else None})())
try:
    cache = wasmcache.ModuleCache(sys.argv[1], strict=sys.argv[3] == "strict")
    module = cache.load(sys.argv[2])
    print(json.dumps({"answer": call_answer(cache.engine, module), "hits": cache.stats().hits, "warnings": warnings}))
except wasmcache.UnsafeCacheError as exc:
    print(json.dumps({"refused": str(exc)}))
"""


def test_memos_another_user_could_write_are_refused_as_a_namespace_is(root: Path, tmp_path: Path) -> None:
    # Found by an outside reader: digests/ and engines/ escaped the checks a root, a namespace and an entry
    # get, and a memo decides which entry a load maps: a world-writable digests/ let anyone point a file at
    # another module. Such a directory is refused (strict) or turns the cache off (strict=False), as a
    # namespace is; a memo file owned by another user is not believed.
    wasm = wasm_file(tmp_path, "m.wasm", 121)
    assert load(root, "default", wasm)["compiles"] == 1
    for name in ("digests", "engines"):
        (root / name).chmod(0o777)
        refused = run_json(STRICT_LOAD, str(root), str(wasm), "strict")
        assert refused == {"refused": refused["refused"]}
        assert f"{root / name} is world-writable" in refused["refused"]
        lenient = run_json(STRICT_LOAD, str(root), str(wasm), "lenient")
        assert (lenient["answer"], lenient["hits"]) == (121, 0)
        assert any("is world-writable" in w for w in lenient["warnings"])
        (root / name).chmod(0o700)
    assert load(root, "default", wasm)["hits"] == 1
    if os.geteuid() == 0:  # a file owned by someone else, in our own directory
        memo = digest_memo(root, wasm)
        os.chown(memo, 65534, 65534)
        result = run_json(STRICT_LOAD, str(root), str(wasm), "strict")
        assert (result["answer"], result["hits"]) == (121, 1)  # read again, not believed
        assert digest_memo(root, wasm).stat().st_uid == os.geteuid()  # remembered anew, by us


def test_gc_and_clear_take_only_the_memos_from_digests_and_engines(root: Path, tmp_path: Path) -> None:
    # Found by an outside reader: `clear` removed digests/ whole and `gc --max-size 0` every file of digests/
    # and engines/, a user's own notes included, where the README promises nothing wasmcache did not write is
    # ever collected or cleared.
    wasm = wasm_file(tmp_path, "m.wasm", 131)
    assert load(root, "default", wasm)["compiles"] == 1
    foreign = [root / "digests" / "README", root / "digests" / "notes.tmp", root / "engines" / "README"]
    for path in foreign:
        path.write_text("mine\n")
    memos = [*root.glob("digests/[0-9a-f]*"), *root.glob("engines/*.engine")]
    assert len(memos) == 3
    run_json("import json, sys, wasmcache; wasmcache.ModuleCache(sys.argv[1]).gc(0); print(json.dumps(0))", str(root))
    assert [p for p in memos if p.exists()] == []
    assert all(p.read_text() == "mine\n" for p in foreign)
    assert load(root, "default", wasm)["compiles"] == 1  # fills the memos again
    run_json("import json, sys, wasmcache; print(json.dumps(wasmcache.ModuleCache(sys.argv[1]).clear()))", str(root))
    assert list(root.glob("digests/[0-9a-f]*")) == []
    assert list(root.glob("engines/*.engine")) == []  # clear forgets every memo (a reader expected so)
    assert all(p.read_text() == "mine\n" for p in foreign)


FUEL_LOAD = """
import json, sys, wasmcache
from wasmcache import EngineSettings
from wasmgen import answer_module
import wasmtime
root, engine_kind, path = sys.argv[1], sys.argv[2], sys.argv[3]
fuel = engine_kind == "fuel"
cache = wasmcache.ModuleCache(root, engine=EngineSettings(consume_fuel=True) if fuel else None)
module = cache.load(path)
store = wasmtime.Store(cache.engine)
if fuel:
    store.set_fuel(10**6)
answer = wasmtime.Instance(store, module, []).exports(store)["answer"](store)
stats = cache.stats()
print(json.dumps({"answer": answer, "hits": stats.hits, "compiles": stats.compiles,
                  "namespace": cache.namespace_dir.name, "fingerprint": cache.engine_identity.fingerprint}))
"""


def test_an_engine_memo_naming_another_fingerprint_neither_quarantines_nor_recompiles(root: Path,
                                                                                     tmp_path: Path) -> None:
    # Found by an outside reader: an engine memo whose fingerprint field names another configuration's
    # namespace (damage, or a hand-edited file) sent the engine there; wasmtime refused that namespace's good
    # entries, they were set aside and compiled again under the wrong fingerprint, and the other
    # configuration then did the same: a cycle of quarantines and compiles. The fingerprint a memo gives is
    # checked by a hash when wasmtime refuses an entry, and before a miss publishes anything.
    wasm = wasm_file(tmp_path, "m.wasm", 62)
    default = run_json(FUEL_LOAD, str(root), "default", str(wasm))
    fuel = run_json(FUEL_LOAD, str(root), "fuel", str(wasm))
    assert default["namespace"] != fuel["namespace"]
    default_memo = root / ENGINES_DIR / f"{memo_file_name(memo_key_for('wasmtime.Engine()'))}.engine"
    fuel_memo = next(p for p in (root / ENGINES_DIR).glob("*.engine") if p != default_memo)
    header, _, rest = fuel_memo.read_bytes().partition(b"\n")
    lengths = header.rsplit(b" ", 1)[0]
    fuel_memo.write_bytes(lengths + b" " + str(default["fingerprint"]).encode() + b"\n" + rest)
    for kind, first in (("fuel", fuel), ("default", default), ("fuel", fuel), ("default", default)):
        again = run_json(FUEL_LOAD, str(root), kind, str(wasm))
        assert again == {**first, "hits": 1, "compiles": 0}, kind
    assert not list(root.glob("quarantine/*"))
    # A miss under the lying memo publishes under the engine's real fingerprint too.
    fuel_memo.write_bytes(lengths + b" " + str(default["fingerprint"]).encode() + b"\n" + rest)
    other = wasm_file(tmp_path, "n.wasm", 63)
    missed = run_json(FUEL_LOAD, str(root), "fuel", str(other))
    assert (missed["answer"], missed["namespace"], missed["compiles"]) == (63, fuel["namespace"], 1)
    assert run_json(FUEL_LOAD, str(root), "default", str(wasm))["hits"] == 1
    assert not list(root.glob("quarantine/*"))
    # A namespace without its engine file (a gc racing a writer can leave one): wasmtime's refusal is the check.
    (root / str(default["namespace"]) / "engine").unlink()
    fuel_memo.write_bytes(lengths + b" " + str(default["fingerprint"]).encode() + b"\n" + rest)
    assert run_json(FUEL_LOAD, str(root), "fuel", str(wasm)) == {**fuel, "hits": 1, "compiles": 0}
    assert not list(root.glob("quarantine/*"))
    # In a copied root (every entry checked in full, its engine section compared before wasmtime sees it), the
    # default engine's memo naming the fuel configuration's fingerprint sets nothing aside either.
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    default_copy = copy / ENGINES_DIR / default_memo.name
    header, _, rest = default_copy.read_bytes().partition(b"\n")
    default_copy.write_bytes(header.rsplit(b" ", 1)[0] + b" " + str(fuel["fingerprint"]).encode() + b"\n" + rest)
    for kind, first in (("default", default), ("fuel", fuel)):
        again = run_json(FUEL_LOAD, str(copy), kind, str(wasm))
        assert again == {**first, "hits": 1, "compiles": 0}, kind
    assert not list(copy.glob("quarantine/*"))


GC = ("import json, sys, wasmcache\n"
      "print(json.dumps(wasmcache.ModuleCache(sys.argv[1]).gc(int(sys.argv[2])).size_bytes))")
USAGE = ("import json, sys, wasmcache\n"
         "s = wasmcache.ModuleCache(sys.argv[1]).stats(); print(json.dumps([s.entries, s.size_bytes]))")


def test_memos_stay_outside_max_size_before_and_after_gc(root: Path, tmp_path: Path) -> None:
    # Found by an outside reader: the README says memos are bounded by their count, outside --max-size, but
    # gc (and verify's recount) added their bytes to the root's size: in a small bound, gc then evicted the
    # very entries the memos lead to, and the size `stats` showed jumped at each collection.
    wasm = wasm_file(tmp_path, "m.wasm", 141)
    assert load(root, "default", wasm)["compiles"] == 1
    entries, size = run_json(USAGE, str(root))
    assert entries == 1
    assert sum(p.stat().st_size for p in root.glob("ns-*/*") if p.name != "engine") == size  # entry + record
    assert run_json(GC, str(root), str(size)) == size  # a bound of exactly the entries' size keeps them
    assert run_json(USAGE, str(root)) == [1, size]
    assert load(root, "default", wasm)["hits"] == 1
    run_cli("--cache-dir", str(root), "verify")
    assert run_json(USAGE, str(root)) == [1, size]


def test_gc_keeps_the_most_recently_used_memos_of_each_kind(root: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by an outside reader: the README says gc keeps 1,000 memos of each kind, dropping those unused;
    # it kept 1,000 in all (each input has a digest memo and a key memo) and the newest written, so an input
    # loaded every day for months lost its memos to a burst of new ones and was digested again.
    files = [wasm_file(tmp_path, f"m{i}.wasm", 150 + i) for i in range(3)]
    for path in files:
        assert load(root, "default", path)["compiles"] == 1
    old = time.time() - 10 * 24 * 3600
    for path in files[:2]:  # the first two memos of each kind written ten days ago ...
        digest = digest_memo(root, path).read_text().split(" ")[1]
        for memo in (digest_memo(root, path), key_memo(root, load(root, "default", path)["fingerprint"], digest)):
            os.utime(memo, (old, old))
    assert load(root, "default", files[0])["hits"] == 1  # ... and the first one used today
    monkeypatch.setattr(_maintenance, "MEMO_KEEP", 2)
    _maintenance.collect_garbage(root, 1 << 30)
    kept = {path.name: digest_memo(root, path).exists() for path in files}
    assert kept == {"m0.wasm": True, "m1.wasm": False, "m2.wasm": True}
    assert len(list(root.glob("digests/*"))) == 4  # two of each kind: the file identities, the keys
    assert load(root, "default", files[0])["hits"] == 1


def test_an_unreadable_digests_directory_is_named_by_gc_clear_and_doctor(root: Path, tmp_path: Path) -> None:
    # Found by an outside reader: with digests/ unreadable (its mode changed by hand), `gc` stopped with "a
    # read-only cache can only be read" for a writable root, `clear` with a bare "Permission denied", and
    # doctor said nothing while every load digested its input again. Run without the capabilities that let
    # root read any directory, so the permission bits hold for this test's root user too.
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to drop the capability that reads any directory")
    wasm = wasm_file(tmp_path, "m.wasm", 161)
    assert load(root, "default", wasm)["compiles"] == 1
    digests = root / "digests"
    digests.chmod(0)
    try:
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable,
                                   "-m", "wasmcache.cli", "--cache-dir", str(root), *args],
                                  capture_output=True, text=True, check=False, timeout=300)
        doctor = cli("doctor")
        assert f"{digests}: digests cannot be read (Permission denied): every load digests its input again" \
            in doctor.stdout, doctor
        assert f"chmod u+rwx {digests}" in doctor.stdout
        gc = cli("gc")
        assert gc.returncode == 0, gc.stderr
        assert gc.stderr.strip().splitlines() == [(
            f"wasmcache: cannot read {digests} (Permission denied): its files are left as they are; "
            f"fix: chmod u+rwx {digests}")]
        assert "1 entry" in gc.stdout
        cleared = cli("clear")
        assert cleared.returncode == 0, cleared.stderr
        assert "removed 1 entry" in cleared.stdout
        assert "Traceback" not in gc.stderr + cleared.stderr + doctor.stderr
    finally:
        digests.chmod(0o700)


def test_a_hit_reads_its_record_without_the_json_extension(root: Path, tmp_path: Path) -> None:
    # A record is JSON; a hit reads it with a parser of the subset Record.to_json writes, so a hit process does
    # not import `_json` (~0.2 ms, issue 14 item 7). A record of another shape is still read by json itself.
    wasm = wasm_file(tmp_path, "m.wasm", 171)
    code = """
import sys, wasmcache
from wasmgen import call_answer
cache = wasmcache.ModuleCache(sys.argv[1])
answer = call_answer(cache.engine, cache.load(sys.argv[2]))
loaded = "_json" in sys.modules
import json
print(json.dumps([answer, cache.stats().hits, loaded]))
"""
    assert run_json(code, str(root), str(wasm))[:2] == [171, 0]
    assert run_json(code, str(root), str(wasm)) == [171, 1, False]
    record = next(root.glob("ns-*/*.rec"))
    fields = json.loads(record.read_bytes())
    record.chmod(0o644)
    record.write_text(json.dumps(fields, indent=1))  # another writer's spacing: the same record
    assert run_json(code, str(root), str(wasm)) == [171, 1, True]


def test_the_records_parser_accepts_only_what_json_reads_the_same(tmp_path: Path) -> None:
    # Differential: damaged and reshaped records through the hit's parser and json.loads. Whatever the hit's
    # parser accepts, json reads as the same value (type included); the rest it leaves to json.
    from wasmcache._core import Record, _plain_json

    record = Record(key="a" * 64, kind="module", wasm_digest="b" * 64, content_digest="c" * 64, size=123,
                    identity=Identity(1, 2, 3, 4, 5), source="x y {z}, '.wasm: 1", wasmtime_version="47.0.1",
                    created=1796420662.3904123)
    text = record.to_json().decode()
    assert _plain_json(text) == json.loads(text)
    assert _plain_json(record._replace(source="é [x].wasm").to_json().decode()) is None  # escapes, brackets
    rnd = random.Random(14)
    alphabet = '{}[]",: 0123456789.eE+-abnulltruefalse\\\t\x00é'
    accepted = 0
    for _ in range(20_000):
        chars = list(text)
        for _ in range(rnd.randint(1, 3)):
            at = rnd.randrange(len(chars))
            roll = rnd.random()
            if roll < 0.4:
                chars[at] = rnd.choice(alphabet)
            elif roll < 0.7:
                del chars[at]
            else:
                chars.insert(at, rnd.choice(alphabet))
        damaged = "".join(chars)
        parsed = _plain_json(damaged)
        if parsed is None:
            continue
        accepted += 1
        assert repr(parsed) == repr(json.loads(damaged)), damaged
    assert accepted > 5_000


def test_a_link_where_a_memo_directory_belongs_is_never_followed(root: Path, tmp_path: Path) -> None:
    # Found by an outside reader: a digests/ that is a symbolic link had memos written outside the root, gc
    # deleting memo files there, doctor silent; pointing at a world-writable directory, doctor advised
    # `chmod o-w ROOT/digests`, which would change the shared target. Such a link is never followed: loads
    # neither read nor write memos through it, gc and clear leave its target alone, doctor names the link.
    wasm = wasm_file(tmp_path, "m.wasm", 181)
    assert load(root, "default", wasm)["compiles"] == 1
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    elsewhere.chmod(0o1777)
    (elsewhere / "keep.txt").write_text("mine\n")
    shutil.rmtree(root / "digests")
    (root / "digests").symlink_to(elsewhere)
    hit = load(root, "default", wasm)
    assert (hit["answer"], hit["hits"]) == (181, 1)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]  # nothing written through the link
    for name in ("0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"):
        (elsewhere / name).write_text(f"wasm:1:2:3:4:5 {'a' * 64}")  # memos by name and content, but not ours
    doctor = run_cli("--cache-dir", str(root), "doctor")
    assert f"{root / 'digests'}: digests is a symbolic link (to {elsewhere})" in doctor.stdout
    assert "chmod o-w" not in doctor.stdout
    assert run_cli("--cache-dir", str(root), "gc", "--max-size", "0").returncode == 0
    assert run_cli("--cache-dir", str(root), "clear").returncode == 0
    assert len(list(elsewhere.iterdir())) == 3


def test_memo_directories_that_cannot_be_written_and_files_that_are_not_memos(root: Path, tmp_path: Path) -> None:
    # Found by an outside reader: a digests/ that could be read but not written, or a directory where a memo
    # belongs, made every load digest its input again with nothing said; gc and clear removed any file of a
    # memo's name, whatever it held; gc advised `chmod u+rwx` for a digests/ another user owns.
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to drop the capability that writes any directory")
    wasm = wasm_file(tmp_path, "m.wasm", 191)
    assert load(root, "default", wasm)["compiles"] == 1
    mine = root / "digests" / "0123456789abcdef0123456789abcdef"
    mine.write_text("my notes, under a name like a memo's\n")
    engine_memo = next((root / ENGINES_DIR).glob("*.engine"))
    engine_memo.unlink()
    engine_memo.mkdir()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m",
                               "wasmcache.cli", "--cache-dir", str(root), *args],
                              capture_output=True, text=True, check=False, timeout=300)

    (root / "digests").chmod(0o500)
    try:
        doctor = cli("doctor").stdout
    finally:
        (root / "digests").chmod(0o700)
    assert f"{root / 'digests'}: digests cannot be written: every load digests its input again" in doctor
    assert f"chmod u+rwx {root / 'digests'}" in doctor
    assert f"{engine_memo}: a directory where a memo belongs: every process probes its engine again" in doctor
    assert cli("clear").returncode == 0
    assert mine.read_text() == "my notes, under a name like a memo's\n"  # not a memo: left alone
    os.chown(root / "digests", 65534, 65534)
    try:
        gc = cli("gc")
    finally:
        os.chown(root / "digests", 0, 0)
    assert gc.returncode == 0
    assert f"make this one yours: sudo chown $(id -u) {root / 'digests'}" in gc.stderr


def test_doctor_names_an_engine_memo_whose_fingerprint_is_not_its_engines(root: Path, tmp_path: Path) -> None:
    # Found by an outside reader: on a root that cannot be written, an edited engine memo is corrected by each
    # process for itself, in every process; doctor never named the one file to remove.
    wasm = wasm_file(tmp_path, "m.wasm", 201)
    fuel = run_json(FUEL_LOAD, str(root), "fuel", str(wasm))
    default = run_json(FUEL_LOAD, str(root), "default", str(wasm))
    memo = root / ENGINES_DIR / f"{memo_file_name(memo_key_for('wasmtime.Engine()'))}.engine"
    assert "engine memo" not in run_cli("--cache-dir", str(root), "doctor").stdout
    header, _, rest = memo.read_bytes().partition(b"\n")
    memo.write_bytes(header.rsplit(b" ", 1)[0] + b" " + str(fuel["fingerprint"]).encode() + b"\n" + rest)
    doctor = run_cli("--cache-dir", str(root), "doctor").stdout
    assert f"{memo}: engine memo names a fingerprint that is not its engine's" in doctor
    assert run_json(FUEL_LOAD, str(root), "default", str(wasm)) == {**default, "hits": 1, "compiles": 0}
    assert not memo.exists() or "engine memo" not in run_cli("--cache-dir", str(root), "doctor").stdout


def test_engine_fingerprint_never_hands_out_a_fingerprint_an_engine_memo_gave_wrongly(root: Path,
                                                                                     tmp_path: Path) -> None:
    # Found by an outside reader: wasmcache.engine_fingerprint() returned an edited engine memo's fingerprint
    # until the process's first load corrected it.
    wasm = wasm_file(tmp_path, "m.wasm", 202)
    fuel = run_json(FUEL_LOAD, str(root), "fuel", str(wasm))
    default = run_json(FUEL_LOAD, str(root), "default", str(wasm))
    memo = root / ENGINES_DIR / f"{memo_file_name(memo_key_for('wasmtime.Engine()'))}.engine"
    header, _, rest = memo.read_bytes().partition(b"\n")
    memo.write_bytes(header.rsplit(b" ", 1)[0] + b" " + str(fuel["fingerprint"]).encode() + b"\n" + rest)
    code = ("import json, sys, wasmcache\n"
            "print(json.dumps(wasmcache.engine_fingerprint(wasmcache.ModuleCache(sys.argv[1]).engine)))")
    assert run_json(code, str(root)) == default["fingerprint"]


NAN_LOAD = """
import json, sys, wasmcache, wasmtime
from wasmcache import EngineSettings
root, engine_kind, path = sys.argv[1], sys.argv[2], sys.argv[3]
cache = wasmcache.ModuleCache(root, engine=EngineSettings(nan_canonicalization=True) if engine_kind == "nan" else None)
module = cache.load(path)
store = wasmtime.Store(cache.engine)
bits = wasmtime.Instance(store, module, []).exports(store)["f"](store) & 0xFFFFFFFF
stats = cache.stats()
print(json.dumps({"bits": hex(bits), "hits": stats.hits, "compiles": stats.compiles,
                  "fingerprint": cache.engine_identity.fingerprint}))
"""


def test_an_engine_memo_naming_a_configuration_wasmtime_accepts_never_serves_its_code(root: Path,
                                                                                     tmp_path: Path) -> None:
    # Found by an outside reader: an engine memo naming the default configuration's fingerprint, read by an
    # engine that canonicalizes NaNs, served the default's code on every hit (wasmtime accepts it: the flag is
    # not part of its compatibility check), and 0/0 gave 0xffc00000 instead of 0x7fc00000. A hit compares its
    # namespace's engine file with the engine's section, once per namespace and cache: one small read.
    wasm = tmp_path / "nan.wasm"
    wasm.write_bytes(wasmtime.wat2wasm(
        '(module (func (export "f") (result i32) (i32.reinterpret_f32 (f32.div (f32.const 0) (f32.const 0)))))'))
    default = run_json(NAN_LOAD, str(root), "default", str(wasm))
    nan = run_json(NAN_LOAD, str(root), "nan", str(wasm))
    assert nan["bits"] == "0x7fc00000"
    assert default["fingerprint"] != nan["fingerprint"]
    default_memo = root / ENGINES_DIR / f"{memo_file_name(memo_key_for('wasmtime.Engine()'))}.engine"
    nan_memo = next(p for p in (root / ENGINES_DIR).glob("*.engine") if p != default_memo)
    header, _, rest = nan_memo.read_bytes().partition(b"\n")
    nan_memo.write_bytes(header.rsplit(b" ", 1)[0] + b" " + str(default["fingerprint"]).encode() + b"\n" + rest)
    again = run_json(NAN_LOAD, str(root), "nan", str(wasm))
    assert again == {**nan, "hits": 1, "compiles": 0}
    assert run_json(NAN_LOAD, str(root), "default", str(wasm)) == {**default, "hits": 1, "compiles": 0}
    assert not list(root.glob("quarantine/*"))
