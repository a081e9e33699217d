"""Corruption, strict permissions, disk faults and diagnostics (issue #4)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import wasmtime

import wasmcache
from conftest import mounted_tmpfs, remount_read_only, run_cli, run_json, run_python
from naive import winch_engine
from wasmgen import answer_module, call_answer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

FRESH_LOAD = """
import json, logging, sys, wasmcache
from wasmgen import answer_module, call_answer
records = []
class Keep(logging.Handler):
    def emit(self, record): records.append(record.getMessage())
logging.getLogger("wasmcache").addHandler(Keep())
logging.getLogger("wasmcache").setLevel(logging.WARNING)
cache = wasmcache.ModuleCache(sys.argv[1])
module = cache.load(answer_module(int(sys.argv[2])))
print(json.dumps({"answer": call_answer(cache.engine, module), "compiles": cache.stats().compiles,
                  "warnings": records}))
"""


def _flip_code_bytes_keep_mtime(entry: Path, other: Path) -> None:
    st = entry.stat()
    data = bytearray(entry.read_bytes())
    # Flip bytes in the middle of .text: the code the test calls.
    for i in range(len(data) // 3, len(data) // 3 + 256):
        data[i] ^= 0xFF
    entry.chmod(0o644)
    with entry.open("r+b") as f:
        f.write(data)
    entry.chmod(0o444)
    os.utime(entry, ns=(st.st_atime_ns, st.st_mtime_ns))  # restore mtime: only ctime betrays it


def _truncate(size: Callable[[int], int]) -> Callable[[Path, Path], None]:
    def damage(entry: Path, other: Path) -> None:
        entry.chmod(0o644)
        os.truncate(entry, size(entry.stat().st_size))
    return damage


def _random_bytes(entry: Path, other: Path) -> None:
    size = entry.stat().st_size
    entry.chmod(0o644)
    entry.write_bytes(os.urandom(size))


def _other_modules_cwasm(entry: Path, other: Path) -> None:
    shutil.copyfile(other, entry.with_suffix(".x"))
    os.replace(entry.with_suffix(".x"), entry)


def _winch_code_of_same_module(entry: Path, other: Path) -> None:
    serialized = wasmtime.Module(winch_engine(), answer_module(50)).serialize()
    entry.with_suffix(".x").write_bytes(serialized)
    os.replace(entry.with_suffix(".x"), entry)


def _symlink(entry: Path, other: Path) -> None:
    entry.unlink()
    entry.symlink_to(other)


CORRUPTIONS = {
    "truncated-to-0": _truncate(lambda _n: 0),
    "truncated-to-half": _truncate(lambda n: n // 2),
    "random-bytes": _random_bytes,
    "code-bytes-flipped-mtime-restored": _flip_code_bytes_keep_mtime,
    "another-modules-cwasm": _other_modules_cwasm,
    "winch-code-of-same-module": _winch_code_of_same_module,
    "symlink": _symlink,
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corruption_matrix_a_fresh_process_gets_a_correct_module(root: Path, corruption: str) -> None:
    # Published by another process: this one maps nothing that the corruption below could pull
    # from under it (modules live as long as their engine here, and wasmtime touches a mapping
    # when it frees it).
    run_python("""
        import sys, wasmcache
        from wasmgen import answer_module
        cache = wasmcache.ModuleCache(sys.argv[1])
        cache.load(answer_module(50))
        cache.load(answer_module(60))
    """, str(root))
    cache = wasmcache.ModuleCache(root)
    entry = cache.entry_path(cache.key_for(answer_module(50)))
    other = cache.entry_path(cache.key_for(answer_module(60)))
    CORRUPTIONS[corruption](entry, other)
    result = run_json(FRESH_LOAD, str(root), "50")  # a signal would fail run_json
    assert result["answer"] == 50
    assert result["compiles"] == 1
    assert any("bad cache entry" in w for w in result["warnings"]), result
    quarantined = [p for p in (root / "quarantine").iterdir() if not p.name.endswith(".why")]
    assert len(quarantined) == 1
    assert wasmcache.ModuleCache(root).verify().ok
    assert other.exists()
    assert call_answer(cache.engine, wasmcache.ModuleCache(root, engine=cache.engine).load(answer_module(60))) == 60


# --- strict permissions ------------------------------------------------------------------------


def test_a_shared_or_foreign_world_writable_root_is_refused_without_chmod_advice(tmp_path: Path) -> None:
    """`--cache-dir /tmp` said "fix: chmod o-w /tmp" (an outside reader): advice that, followed as root,
    breaks the machine. Only wasmcache's own paths, or a new empty directory of this user's, get a chmod."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "someone-elses").write_text("x")
    shared.chmod(0o1777)
    sticky_empty = tmp_path / "sticky-empty"
    sticky_empty.mkdir()
    sticky_empty.chmod(0o1777)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    a_file.chmod(0o666)
    for path in (shared, sticky_empty, a_file):
        with pytest.raises(wasmcache.UnsafeCacheError, match="world-writable") as info:
            wasmcache.ModuleCache(path)
        assert "chmod" not in str(info.value)
        assert "choose a directory of your own" in str(info.value)
    mine = tmp_path / "new-empty"
    mine.mkdir()
    mine.chmod(0o777)
    with pytest.raises(wasmcache.UnsafeCacheError, match=f"chmod o-w {mine}"):
        wasmcache.ModuleCache(mine)
    assert (shared / "someone-elses").read_text() == "x"


def test_world_writable_root_namespace_or_entry_is_refused(root: Path) -> None:
    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(1))
    entry = cache.entry_path(cache.key_for(answer_module(1)))
    for path in (root, cache.namespace_dir, entry):
        original = path.stat().st_mode & 0o777
        path.chmod(original | 0o002)
        try:
            with pytest.raises(wasmcache.UnsafeCacheError, match="world-writable") as info:
                wasmcache.ModuleCache(root).load(answer_module(1))
            assert str(path) in str(info.value)
            assert "chmod o-w" in str(info.value)
            assert isinstance(info.value, wasmcache.CacheError)
            # verify never calls ok a root every load refuses: the same path, the same fix; --fix changes no mode
            for args in ((), ("--fix",)):
                checked = run_cli("verify", *args, "--cache-dir", str(root))
                assert checked.returncode == 1, checked.stdout
                assert f"unsafe: {path}: " in checked.stdout
                assert f"fix: chmod o-w {path}" in checked.stdout
            assert path.stat().st_mode & 0o002
            # strict=False: a warning, and compile-only (the entry is not mapped, nothing written)
            relaxed = wasmcache.ModuleCache(root, strict=False)
            assert call_answer(relaxed.engine, relaxed.load(answer_module(1))) == 1
            assert relaxed.stats().compiles == 1
        finally:
            path.chmod(original)
    assert run_cli("verify", "--cache-dir", str(root)).returncode == 0
    wasm = root.parent / "answer.wasm"
    wasm.write_bytes(answer_module(1))
    wasmcache.ModuleCache(root).load(wasm)  # a load by path remembers its digest in digests/
    digests = root / "digests"  # what such a load consults first (test_hit_memos: refused the same way)
    digests.chmod(0o777)
    try:
        report = wasmcache.ModuleCache(root).verify()
        found = [(f.path, f.problem, f.fix) for f in report.findings]
        assert found == [(str(digests), "unsafe", f"chmod o-w {digests}")]
    finally:
        digests.chmod(0o700)


def test_control_the_naive_cache_maps_a_planted_world_writable_entry(root: Path, tmp_path: Path) -> None:
    # What strict mode prevents: a naive cache maps whatever sits at the path, whoever wrote it.
    from naive import naive_load
    naive_root = tmp_path / "naive"
    naive_load(naive_root, wasmtime.Engine(), answer_module(2))
    (planted,) = naive_root.iterdir()
    planted.write_bytes(wasmtime.Module(wasmtime.Engine(), answer_module(666)).serialize())
    planted.chmod(0o666)
    engine = wasmtime.Engine()
    assert call_answer(engine, naive_load(naive_root, engine, answer_module(2))) == 666


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_entry_owned_by_another_user_is_refused(root: Path) -> None:
    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(3))
    entry = cache.entry_path(cache.key_for(answer_module(3)))
    os.chown(entry, 12345, 12345)
    # As root, files of uid 12345 are "another user": refused.
    with pytest.raises(wasmcache.UnsafeCacheError, match="another user"):
        wasmcache.ModuleCache(root).load(answer_module(3))


def test_directories_are_created_private(root: Path) -> None:
    wasmcache.ModuleCache(root).load(answer_module(4))
    for directory in [root, *root.glob("ns-*"), *root.glob("digests")]:
        assert directory.stat().st_mode & 0o077 == 0, directory


# --- disk faults --------------------------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "tiny", "size=1m,mode=0700") as mount:
        yield mount


def _no_partial_files(root: Path) -> None:
    assert not list(root.rglob("*.tmp"))
    for entry in root.rglob("*.cwasm"):
        record = entry.with_suffix(".rec")
        assert record.exists(), entry
        assert json.loads(record.read_text())["size"] == entry.stat().st_size


def test_disk_full_still_returns_a_working_module(tiny_tmpfs: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tiny_tmpfs / "cache"
    cache = wasmcache.ModuleCache(root)
    free = shutil.disk_usage(tiny_tmpfs).free
    (tiny_tmpfs / "filler").write_bytes(b"\0" * (free - 16 * 1024))  # leave 16 KiB: less than one entry
    with caplog.at_level("WARNING", logger="wasmcache"):
        module = cache.load(answer_module(7))
    assert call_answer(cache.engine, module) == 7
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "could not store" in warnings[0].getMessage()
    assert f"in the cache at {cache.namespace_dir} (No space left on device)" in warnings[0].getMessage()  # which disk
    _no_partial_files(root)


def test_a_new_root_on_a_full_disk_is_named_and_never_left_half_made(tiny_tmpfs: Path, tmp_path: Path) -> None:
    # Found by an outside reader: on a full disk, "cannot create cache root" left the root behind (an empty
    # directory), and the drop-in's warning said only "it could not be set up".
    root = tiny_tmpfs / "cache"
    free = shutil.disk_usage(tiny_tmpfs).free
    (tiny_tmpfs / "filler").write_bytes(b"\0" * free)
    (tmp_path / "m.wasm").write_bytes(answer_module(21))
    compiled = run_cli("compile", "--cache-dir", str(root), str(tmp_path / "m.wasm"))
    assert compiled.returncode == 0, compiled.stderr
    assert "could not be set up: No space left on device" in compiled.stderr
    assert not root.exists()
    program = "import wasmtime; wasmtime.Module(wasmtime.Engine(), '(module)'); print('ok')"
    wrapped = run_cli("--cache-dir", str(root), "exec", sys.executable, "-c", program)
    assert wrapped.stdout == "ok\n", wrapped.stderr
    assert wrapped.stderr.count("\n") == 1, wrapped.stderr
    assert f"drop-in cannot use its cache root ({root} (No space left on device))" in wrapped.stderr
    assert not root.exists()


def test_read_only_filesystem_serves_hits_and_compiles_misses(tiny_tmpfs: Path) -> None:
    root = tiny_tmpfs / "cache"
    wasmcache.ModuleCache(root).load(answer_module(8))
    remount_read_only(tiny_tmpfs)
    result = run_json(FRESH_LOAD, str(root), "8")
    assert (result["answer"], result["compiles"], result["warnings"]) == (8, 0, [])
    result = run_json(FRESH_LOAD, str(root), "9")
    assert (result["answer"], result["compiles"]) == (9, 1)
    _no_partial_files(root)


def test_file_size_limit_still_returns_a_working_module(root: Path) -> None:
    code = FRESH_LOAD.replace("import json, logging, sys, wasmcache",
                              "import json, logging, sys, resource, wasmcache\n"
                              "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))")
    result = run_json(code, str(root), "10")
    assert result["answer"] == 10
    assert len(result["warnings"]) == 1
    assert "could not store" in result["warnings"][0]
    _no_partial_files(root)


# --- doctor -------------------------------------------------------------------------------------


def test_doctor_on_a_healthy_and_a_damaged_root(root: Path) -> None:
    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(11))
    healthy = run_cli("doctor", "--cache-dir", str(root))
    assert healthy.returncode == 0, healthy.stdout
    assert "no problems found" in healthy.stdout
    cache.namespace_dir.chmod(0o777)
    (root / "stray.txt").write_text("?")
    entry = cache.entry_path(cache.key_for(answer_module(11)))
    entry.chmod(0o644)
    with entry.open("r+b") as f:
        f.write(b"\0" * 64)
    report = run_cli("doctor", "--json", "--cache-dir", str(root))
    assert report.returncode == 1
    findings = json.loads(report.stdout)
    problems = " | ".join(f["problem"] for f in findings)
    assert "world-writable" in problems
    assert "foreign" in problems
    assert "corrupt" in problems
    assert all(f["fix"] for f in findings)
    cache.namespace_dir.chmod(0o700)


HOLDER = """
import sys, time, wasmtime
from wasmgen import answer_module
engine = wasmtime.Engine()
module = wasmtime.Module.deserialize_file(engine, sys.argv[1])
print("ready", flush=True)
time.sleep(120)
"""


def _start_holder(path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_doctor_pid_tells_a_safe_replacement_from_an_in_place_rewrite(tmp_path: Path) -> None:
    serialized = wasmtime.Module(wasmtime.Engine(), answer_module(12, functions=400)).serialize()
    safe, unsafe = tmp_path / "safe.cwasm", tmp_path / "unsafe.cwasm"
    safe.write_bytes(serialized)
    unsafe.write_bytes(serialized)
    holders = [_start_holder(safe), _start_holder(unsafe)]
    try:
        before = json.loads(run_cli("doctor", "--pid", str(holders[1].pid), "--json").stdout)
        assert [m["state"] for m in before] == ["intact"]
        time.sleep(1.5)  # a process's start time is known to about a second (/proc/stat btime)
        # Another process: one publishes by rename, the other rewrites in place (the naive pattern).
        rewrite = """
        import os, sys
        from pathlib import Path
        safe, unsafe, data = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[1]).read_bytes()
        Path(str(safe) + ".new").write_bytes(data)
        os.replace(str(safe) + ".new", safe)
        with open(unsafe, "r+b") as f:
            f.write(data)
        """
        from conftest import run_python
        run_python(rewrite, str(safe), str(unsafe))
        replaced = run_cli("doctor", "--pid", str(holders[0].pid), "--json")
        assert replaced.returncode == 0
        assert [m["state"] for m in json.loads(replaced.stdout)] == ["replaced-safely"]
        rewritten = run_cli("doctor", "--pid", str(holders[1].pid))
        assert rewritten.returncode == 1
        assert "modified-in-place" in rewritten.stdout
        assert "unsafe.cwasm" in rewritten.stdout
    finally:
        for holder in holders:
            holder.send_signal(signal.SIGKILL)
            holder.wait()


def test_doctor_pid_of_a_missing_process_is_one_line() -> None:
    result = run_cli("doctor", "--pid", "999999999")
    assert result.returncode == 2
    assert "process 999999999" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def immutable() -> Iterator[Callable[[Path], None]]:
    """Make a directory refuse every change, even root's (chattr +i): a real 'permission denied'."""
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("chattr +i needs root and e2fsprogs")
    marked: list[Path] = []

    def mark(path: Path) -> None:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"this filesystem has no immutable attribute: {done.stderr.strip()}")
        marked.append(path)

    yield mark
    for path in marked:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_permission_denied_still_returns_a_working_module(root: Path, immutable: Callable[[Path], None],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(13))  # the namespace exists
    immutable(cache.namespace_dir)  # now nothing can be created in it (EPERM, as for another owner's dir)
    fresh = wasmcache.ModuleCache(root)
    assert fresh.writable
    with caplog.at_level("WARNING", logger="wasmcache"):
        module = fresh.load(answer_module(14))
    assert call_answer(fresh.engine, module) == 14
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "compiling without caching" in warnings[0] or "could not store" in warnings[0]
    assert call_answer(fresh.engine, fresh.load(answer_module(13))) == 13  # hits still served
    _no_partial_files(root)


def test_an_immutable_namespace_is_named_by_compile_and_doctor(root: Path, immutable: Callable[[Path], None],
                                                               tmp_path: Path) -> None:
    # Found by an outside reader: with a namespace made immutable, every miss warned "cannot lock", `compile` then
    # blamed the size limit ("evicted at once: the size limit is 4.0 GiB") and doctor said "no problems found".
    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(13))
    immutable(cache.namespace_dir)
    (tmp_path / "m.wasm").write_bytes(answer_module(14))
    done = run_cli("compile", "--cache-dir", str(root), str(tmp_path / "m.wasm"))
    assert done.returncode == 0, done.stderr
    said = done.stderr.splitlines()[-1]
    assert f"not cached ({cache.namespace_dir} cannot be written (Operation not permitted))" in said, done.stderr
    assert "`wasmcache doctor` says more" in done.stderr  # the warning, where doctor gives the fix
    assert "size limit" not in done.stderr
    doctor = run_cli("doctor", "--cache-dir", str(root))
    assert doctor.returncode == 0, doctor.stdout  # a warning: hits are served, misses compile
    said = f"warning: {cache.namespace_dir}: namespace cannot be written (an immutable flag, or the like): its entries"
    assert said in doctor.stdout
    assert f"chattr -i {cache.namespace_dir}" in doctor.stdout


OWN_FILE = """
import os, sys, wasmtime
engine, own = wasmtime.Engine(), sys.argv[1]
if not os.path.exists(own):
    with open(own, "wb") as f:
        f.write(wasmtime.Module(engine, '(module (func (export "f") (result i32) i32.const 9))').serialize())
module = wasmtime.Module.deserialize_file(engine, own)
store = wasmtime.Store(engine)
print(wasmtime.Instance(store, module, []).exports(store)["f"](store))
"""


def test_a_programs_own_file_in_a_namespace_that_cannot_be_written_is_said_to_load_as_a_copy(
        root: Path, immutable: Callable[[Path], None], tmp_path: Path) -> None:
    # Found by an outside reader: under exec, a program deserializing its own .cwasm got "cannot lock <key>.lock
    # (Operation not permitted); compiling without caching": nothing is compiled, and the lock is not the cause.
    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(13))
    immutable(cache.namespace_dir)
    program, own = tmp_path / "own.py", tmp_path / "own.cwasm"
    program.write_text(OWN_FILE)
    assert run_python(OWN_FILE, str(own)).stdout == "9\n"  # its own file, written unwrapped
    wrapped = run_cli("--cache-dir", str(root), "exec", sys.executable, str(program), str(own))
    assert (wrapped.returncode, wrapped.stdout) == (0, "9\n"), wrapped.stderr
    assert wrapped.stderr.count("\n") == 1, wrapped.stderr
    assert f"{cache.namespace_dir} cannot be written (Operation not permitted); loading it as a copy" in wrapped.stderr


def _an_entry_rewritten_in_place(root: Path, answer: int) -> tuple[wasmcache.ModuleCache, Path]:
    """The cache of `root` and the entry of answer_module(`answer`), with bytes of its code overwritten."""
    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(answer))
    entry = cache.entry_path(cache.key_for(answer_module(answer)))
    entry.chmod(0o644)
    with entry.open("r+b") as f:
        f.seek(300)
        f.write(b"GARBAGE")
    return cache, entry


def test_a_damaged_entry_that_cannot_be_set_aside_costs_one_line_and_fix_says_when_done(
        root: Path, immutable: Callable[[Path], None], tmp_path: Path) -> None:
    # Found by an outside reader: each load printed "bad cache entry ... cannot be set aside" and then "could not
    # store ... (Operation not permitted)", the same cause twice; verify --fix, having quarantined the entry,
    # still advised "run `wasmcache verify --fix`".
    cache, _ = _an_entry_rewritten_in_place(root, 16)
    (tmp_path / "m.wasm").write_bytes(answer_module(16))
    immutable(cache.namespace_dir)
    ran = run_cli("run", "--cache-dir", str(root), "--invoke", "answer", str(tmp_path / "m.wasm"))
    assert (ran.returncode, ran.stdout) == (0, "16\n"), ran.stderr
    assert ran.stderr.count("\n") == 1, ran.stderr
    assert "cannot be set aside" in ran.stderr
    subprocess.run(["chattr", "-i", str(cache.namespace_dir)], check=True)
    fixed = run_cli("verify", "--fix", "--cache-dir", str(root))
    assert "fix: done: set aside in quarantine/" in fixed.stdout, fixed.stdout
    assert "run `wasmcache verify --fix`" not in fixed.stdout


def test_doctor_names_a_root_that_cannot_be_written(root: Path, immutable: Callable[[Path], None],
                                                    tmp_path: Path) -> None:
    # Found by an outside reader: a root made immutable stored nothing ("not cached (... is not writable)") while
    # doctor said "no problems found"; the same one level down was a warning with its fix.
    wasmcache.ModuleCache(root).load(answer_module(15))
    immutable(root)
    doctor = run_cli("doctor", "--cache-dir", str(root))
    said = f"warning: {root}: cache root cannot be written (an immutable flag, or the like): its entries"
    assert said in doctor.stdout, doctor.stdout
    assert f"chattr -i {root}" in doctor.stdout
    # A read-only file system is a note: an image's cache is meant so.
    with mounted_tmpfs(tmp_path / "ro", "size=4m") as mount:
        image = mount / "cache"
        wasmcache.ModuleCache(image).load(answer_module(15))
        remount_read_only(mount)
        seen = run_cli("doctor", "--cache-dir", str(image)).stdout
        assert f"info: {image}: cache root is on a read-only file system" in seen, seen
        assert "warning" not in seen


def test_inspect_decodes_a_cwasm_that_is_not_ours(tmp_path: Path) -> None:
    for name, engine in (("cranelift", wasmtime.Engine()), ("winch", winch_engine())):
        path = tmp_path / f"{name}.cwasm"
        path.write_bytes(wasmtime.Module(engine, answer_module(15)).serialize())
        info = json.loads(run_cli("inspect", "--json", str(path)).stdout)
        assert info["compiler"] == name
        assert info["kind"] == "module"
        assert info["wasmtime_version"] == wasmtime_major()
        assert "key" not in info  # not an entry of ours: no record to show


def wasmtime_major() -> str:
    from importlib.metadata import version

    return version("wasmtime").split(".")[0]


def test_doctor_reports_a_corrupt_entry_once(root: Path) -> None:
    # An entry rewritten in place: verify's "corrupt" says it all; no second, softer warning about it.
    _, entry = _an_entry_rewritten_in_place(root, 13)
    findings = [f for f in json.loads(run_cli("doctor", "--json", "--cache-dir", str(root)).stdout)
                if f["path"] == str(entry)]
    assert [f["severity"] for f in findings] == ["danger"]


OUT_OF_DESCRIPTORS = """
import json, logging, os, resource, sys, wasmtime, wasmcache
root, wasm = sys.argv[1:3]
wasmcache.ModuleCache(root).load(wasm)  # published
cache = wasmcache.ModuleCache(root, engine=wasmtime.Engine())  # another engine: no module memo
cache.key_for(wasm)  # the digest is known: the hit opens the record, then the entry, then wasmtime maps it
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(int(fd) for fd in os.listdir("/proc/self/fd")) + 8, hard))
spare = []
try:
    while True:
        spare.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
os.close(spare.pop())  # one descriptor left: the entry takes it, and wasmtime has none to map it
try:
    cache.load(wasm)
    outcome = "loaded"
except wasmcache.CacheError as exc:
    outcome = str(exc)
for fd in spare:
    os.close(fd)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
again = wasmcache.ModuleCache(root, engine=wasmtime.Engine())
again.load(wasm)
print(json.dumps({"outcome": outcome, "hits": again.stats().hits}))
"""


def test_an_entry_this_process_has_no_descriptor_to_map_is_never_set_aside(root: Path, tmp_path: Path) -> None:
    # wasmtime's "failed to open file: Too many open files (os error 24)" when mapping a checked entry is
    # the process's limit, not the entry's fault: it was quarantined as bad (and compiled again).
    wasm = tmp_path / "m.wasm"
    wasm.write_bytes(answer_module(23))
    proc = run_python(OUT_OF_DESCRIPTORS, str(root), str(wasm))
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["outcome"].startswith("cannot map a cache entry now: ")
    assert "os error 24" in result["outcome"]
    assert result["hits"] == 1  # the entry is still there, served once the process has descriptors again
    assert "bad cache entry" not in proc.stderr
    assert not (root / "quarantine").exists() or not any((root / "quarantine").iterdir())


def test_disk_full_threads_waiting_on_one_key_share_one_compile(tiny_tmpfs: Path) -> None:
    """The first thread compiles and cannot store; those that waited on the key's lock take its module
    instead of each compiling again (a real full tmpfs, real threads)."""
    import threading

    root = tiny_tmpfs / "cache"
    cache = wasmcache.ModuleCache(root)
    free = shutil.disk_usage(tiny_tmpfs).free
    (tiny_tmpfs / "filler").write_bytes(b"\0" * (free - 16 * 1024))  # leave 16 KiB: less than one entry
    wasm = answer_module(12)
    start = threading.Barrier(4)
    modules: list[object] = []

    def load() -> None:
        start.wait()
        modules.append(cache.load(wasm))  # kept alive, as a program keeps what it loaded

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(modules) == 4
    assert all(call_answer(cache.engine, module) == 12 for module in modules)
    assert cache.stats().compiles == 1
    _no_partial_files(root)


def test_a_root_made_immutable_is_diagnosed_with_advice_that_can_work(root: Path,
                                                                      immutable: Callable[[Path], None]) -> None:
    # Found by an outside reader: `chattr -R +i` on a root changes every entry's ctime, so every load checks
    # content in full (as on a read-only root whose files were copied); doctor then advised `verify --fix`,
    # which cannot record anything there. Its advice now says what a load does and when the fix can work.
    from wasmcache._doctor import diagnose_root

    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(17))
    entry = cache.entry_path(cache.key_for(answer_module(17)))
    immutable(entry)  # its ctime changes: no longer the file that was published
    immutable(cache.namespace_dir)
    found = [d for d in diagnose_root(root) if d.path == str(entry)]
    assert [d.problem for d in found] == [
        "entry is not the file that was published (a chmod, a copy or a restore since): its content checks out"]
    assert "cannot be written" in found[0].fix
    assert "records it once it can be" in found[0].fix
    # verify --fix cannot record it there, and does not say it did (the second reader: "1 re-recorded" every run)
    fixed = run_cli("verify", "--fix", "--cache-dir", str(root))
    assert "re-recorded" not in fixed.stdout, fixed.stdout
    fresh = wasmcache.ModuleCache(root)
    assert call_answer(fresh.engine, fresh.load(answer_module(17))) == 17
    assert fresh.stats().hits == 1


def test_following_doctors_chmod_fix_leaves_no_warning(root: Path) -> None:
    # Found by an outside reader: after the advised `chmod o-w` on a world-writable entry, doctor warned that the
    # entry "is not the file that was published (copied, restored or modified since)": the chmod changed its ctime.
    # Doctor checked its content meanwhile (verify's check): a note, not a warning; `verify --fix` settles it.
    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(18))
    entry = cache.entry_path(cache.key_for(answer_module(18)))
    entry.chmod(entry.stat().st_mode | 0o002)
    before = json.loads(run_cli("doctor", "--json", "--cache-dir", str(root)).stdout)
    assert [(d["severity"], d["fix"]) for d in before if d["problem"].startswith("unsafe")] == [
        ("danger", f"chmod o-w {entry}")]
    # Dangers first (found by the next reader): fixes applied top-down converge, the chmod before the re-record.
    assert before[0]["severity"] == "danger", before
    subprocess.run(["chmod", "o-w", str(entry)], check=True)  # the fix, as the user runs it
    after = [d for d in json.loads(run_cli("doctor", "--json", "--cache-dir", str(root)).stdout)
             if d["path"].startswith(str(root))]
    assert [(d["severity"], d["path"]) for d in after] == [("info", str(entry))], after
    assert "its content checks out" in after[0]["problem"]
    assert "1 re-recorded" in run_cli("verify", "--fix", "--cache-dir", str(root)).stdout  # it says what it did
    settled = json.loads(run_cli("doctor", "--json", "--cache-dir", str(root)).stdout)
    assert [d for d in settled if d["path"].startswith(str(root))] == []


def test_doctor_writes_nothing_into_the_root(root: Path) -> None:
    # Found by the third outside reader: every doctor run rewrote ROOT/usage (verify's recount).
    wasmcache.ModuleCache(root).load(answer_module(19))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    run_cli("doctor", "--cache-dir", str(root))
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()} == before


def test_a_python_without_blake3_gets_one_line_naming_the_fix_not_a_traceback(root: Path) -> None:
    # Found by an outside reader: blake3 is a declared dependency, but a broken installation without it got a
    # raw ModuleNotFoundError from deep inside a miss.
    code = """
import json, sys
sys.modules["blake3"] = None  # as in a Python where it is not installed
import wasmcache
from wasmgen import answer_module
try:
    wasmcache.ModuleCache(sys.argv[1]).load(answer_module(18))
except wasmcache.CacheError as exc:
    print(json.dumps(str(exc)))
"""
    message = run_json(code, str(root))
    assert message.startswith("cannot hash: blake3 does not import in ")
    assert message.endswith("-m pip install blake3")


def _damage(entry: Path) -> None:
    entry.chmod(0o644)
    with entry.open("r+b") as f:
        f.seek(entry.stat().st_size // 2)
        f.write(b"XXXX")


def test_a_link_where_quarantine_belongs_is_never_followed(root: Path, tmp_path: Path) -> None:
    # Found by an outside reader: with ROOT/quarantine a symbolic link, `verify --fix` moved a damaged entry and
    # its reason out of the root into the link's target (world-writable in the reader's test), and `stats`
    # counted what was behind it. A bad entry is removed instead; doctor names the link.
    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(21))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "big").write_bytes(b"x" * 100_000)
    (root / "quarantine").symlink_to(elsewhere)
    entry = cache.entry_path(cache.key_for(answer_module(21)))
    _damage(entry)
    report = cache.verify(fix=True)
    assert report.fixed == 1
    assert not entry.exists()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["big"]
    assert cache.stats().size_bytes < 100_000
    doctor = run_cli("--cache-dir", str(root), "doctor").stdout
    assert f"{root / 'quarantine'}: quarantine is a symbolic link" in doctor


def test_a_namespace_nobody_may_change_is_never_reported_cleared_or_fixed(
        root: Path, immutable: Callable[[Path], None], caplog: pytest.LogCaptureFixture) -> None:
    # Found by an outside reader: with a namespace made immutable (chattr +i), `clear` printed "removed 3
    # entries" and reset the usage record to 0 while all three stayed, `verify --fix` counted one quarantined
    # that was not, and each load warned twice that it was "setting aside" an entry it could not move.
    cache = wasmcache.ModuleCache(root)
    for answer in (22, 23):
        cache.load(answer_module(answer))
    _damage(cache.entry_path(cache.key_for(answer_module(22))))
    immutable(cache.namespace_dir)
    fresh = wasmcache.ModuleCache(root)
    with caplog.at_level("WARNING", logger="wasmcache"):
        assert call_answer(fresh.engine, fresh.load(answer_module(22))) == 22
    said = [r.getMessage() for r in caplog.records if "bad cache entry" in r.getMessage()]
    assert len(said) == 1, said
    assert "it cannot be set aside: its directory cannot be written" in said[0]
    assert fresh.verify(fix=True).fixed == 0
    assert fresh.clear() == 0
    assert fresh.stats().entries == 2
    # gc down to nothing evicts nothing there, and says why both stay rather than only that they remain
    collected = run_cli("gc", "--max-size", "0", "--cache-dir", str(root))
    assert collected.returncode == 0, collected.stderr
    assert "evicted 0 entries" in collected.stdout
    assert f"2 entries stay over the limit: {cache.namespace_dir} cannot be written" in collected.stdout
    report = fresh.gc(max_size=0)
    assert (report.not_evicted, report.unwritable_namespaces) == (2, [str(cache.namespace_dir)])


def test_the_usage_record_stays_exact_when_a_load_replaces_a_damaged_entry(root: Path) -> None:
    # Found by an outside reader: a load that set a damaged entry aside and published it anew counted one
    # entry (and one record) more than the root held, until the next recount.
    from wasmcache._maintenance import scan_usage
    from wasmcache._stats import read_usage

    cache = wasmcache.ModuleCache(root)
    for answer in (31, 32):
        cache.load(answer_module(answer))
    _damage(cache.entry_path(cache.key_for(answer_module(31))))
    fresh = wasmcache.ModuleCache(root)
    assert call_answer(fresh.engine, fresh.load(answer_module(31))) == 31
    set_aside = [p for p in (root / "quarantine").iterdir() if not p.name.endswith(".why")]
    assert len(set_aside) == 1  # the damaged one (and a note of why, beside it)
    usage = read_usage(root)
    assert usage is not None
    assert (usage.entries, usage.size_bytes) == scan_usage(root)
    assert fresh.stats().entries == 2


def test_compile_never_calls_a_module_cached_behind_a_namespace_link(root: Path, tmp_path: Path) -> None:
    # Found by an outside reader: with the namespace a link to copies of its entries, `compile --json` said
    # "cached": true with an entry path nothing serves; with a link to an empty directory it blamed the size limit.
    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(31))
    namespace = cache.namespace_dir
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(namespace, elsewhere)
    namespace.rename(root / "set-aside")
    namespace.symlink_to(elsewhere)
    (tmp_path / "m.wasm").write_bytes(answer_module(31))
    listed = run_cli("compile", "--json", "--cache-dir", str(root), str(tmp_path / "m.wasm"))
    shown = json.loads(listed.stdout)
    assert (shown["cached"], shown["entry"]) == (False, None), shown
    for entry in elsewhere.iterdir():
        entry.unlink()
    said = run_cli("compile", "--cache-dir", str(root), str(tmp_path / "m.wasm")).stderr.splitlines()[-1]
    assert f"not cached ({namespace} is a symbolic link, never followed)" in said
    assert not list(elsewhere.iterdir())  # nothing written through the link


def test_a_link_where_a_namespace_belongs_is_never_followed(root: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    # Found by an outside reader: with ROOT/ns-... a symbolic link to a directory elsewhere, loads served hits from
    # it and published new entries through it, while gc, verify, ls and stats called it foreign and never looked
    # there (nothing bounded what it held). Loads never follow it now, as for digests/, engines/ and quarantine/.
    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(41))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = elsewhere / cache.namespace_dir.name
    cache.namespace_dir.rename(moved)
    cache.namespace_dir.symlink_to(moved)
    before = sorted(p.name for p in moved.iterdir())
    fresh = wasmcache.ModuleCache(root)
    with caplog.at_level("WARNING", logger="wasmcache"):
        assert call_answer(fresh.engine, fresh.load(answer_module(41))) == 41
        assert call_answer(fresh.engine, fresh.load(answer_module(42))) == 42
    assert (fresh.stats().hits, fresh.stats().compiles) == (0, 2)  # nothing served from it
    assert sorted(p.name for p in moved.iterdir()) == before  # nothing written through it
    said = [r.getMessage() for r in caplog.records if "symbolic link" in r.getMessage()]
    assert len(said) == 1, said
    assert f"{cache.namespace_dir} is a symbolic link, never followed" in said[0]
    checked = run_cli("verify", "--cache-dir", str(root))
    assert checked.returncode == 1
    assert f"foreign: {cache.namespace_dir}: namespace is a symbolic link: never followed" in checked.stdout


def test_verify_fix_on_an_entry_that_cannot_be_moved_changes_nothing_and_says_so(
        root: Path, immutable: Callable[[Path], None]) -> None:
    # Found by an outside reader: `verify --fix` on a damaged entry made immutable (chattr +i) deleted its record,
    # left the file (now an orphan whose origin was lost), printed "0 quarantined" and advised `verify --fix`.
    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(51))
    entry = cache.entry_path(cache.key_for(answer_module(51)))
    record = entry.with_suffix(".rec")
    _damage(entry)
    immutable(entry)
    fixed = run_cli("verify", "--fix", "--cache-dir", str(root))
    assert fixed.returncode == 1
    assert "0 quarantined" in fixed.stdout
    assert f"corrupt: {entry}: " in fixed.stdout
    assert f"it could not be set aside now: the file cannot be moved (immutable? `lsattr -d {entry}`" in fixed.stdout
    assert entry.exists()
    assert record.exists()  # all of it stays: still a corrupt entry, not an orphan
    assert "corrupt: " in run_cli("verify", "--cache-dir", str(root)).stdout


def test_a_fix_names_a_path_as_one_inert_shell_word(tmp_path: Path) -> None:
    # Found by an outside reader: `fix: chmod o-w /x/q $(touch pwned)`, pasted into a shell, ran the command
    # in the name (and a name with a space split into two words).
    root = tmp_path / "q $(touch pwned) 'x'"
    wasmcache.ModuleCache(root).load(answer_module(52))
    root.chmod(0o777)
    try:
        checked = run_cli("verify", "--cache-dir", str(root))
        fix = checked.stdout.split("fix: ", 1)[1].splitlines()[0]
        assert fix == f"chmod o-w {shlex.quote(str(root))}"
        subprocess.run(["sh", "-c", fix], check=True, cwd=tmp_path)  # what pasting it does
        assert not (tmp_path / "pwned").exists()
        assert not root.stat().st_mode & 0o002
    finally:
        root.chmod(0o700)


def test_gc_and_clear_never_half_remove_an_entry_and_say_which_file_refused(
        root: Path, immutable: Callable[[Path], None]) -> None:
    # Found by an outside reader: with one entry's file and another's record made immutable, `gc --max-size 0`
    # removed the other file of each (an entry without its record, a record without its entry), blamed "a writer",
    # and `clear` printed "removed 0 entries" and exited 0 on a namespace it could not change.
    cache = wasmcache.ModuleCache(root)
    keys = []
    for answer in (61, 62, 63):
        cache.load(answer_module(answer))
        keys.append(cache.key_for(answer_module(answer)))
    stuck_entry, stuck_record = cache.entry_path(keys[0]), cache.entry_path(keys[1]).with_suffix(".rec")
    immutable(stuck_entry)
    immutable(stuck_record)
    collected = run_cli("gc", "--max-size", "0", "--cache-dir", str(root))
    assert collected.returncode == 0, collected.stderr
    assert "evicted 1 entry" in collected.stdout
    assert f"2 entries stay over the limit: {stuck_entry} and 1 more refused to go (immutable?" in collected.stdout
    for key in keys[:2]:  # each whole: its entry and its record
        assert cache.entry_path(key).exists()
        assert cache.entry_path(key).with_suffix(".rec").exists()
    assert not cache.entry_path(keys[2]).exists()
    # each named by the file that refused: the entry of one, the record of the other (not its entry)
    assert wasmcache.ModuleCache(root).gc(max_size=0).unremovable == [str(stuck_entry), str(stuck_record)]
    cleared = run_cli("clear", "--cache-dir", str(root))
    assert cleared.returncode == 1
    assert "removed 0 entries" in cleared.stdout
    assert "2 entries stay: " in cleared.stderr
    assert "refused to go (immutable?" in cleared.stderr
    for key in keys[:2]:
        assert cache.entry_path(key).exists()
        assert cache.entry_path(key).with_suffix(".rec").exists()


def test_clear_says_a_writer_holds_what_stays_when_one_does(root: Path) -> None:
    # Found by an outside reader: with compiles running, clear blamed an immutable file (`lsattr`, `chattr -i`)
    # for an entry a writer held at that moment; gc said it right.
    from wasmcache._core import lock_path
    from wasmcache._lock import KeyLock

    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(99))
    holder = KeyLock(lock_path(cache.namespace_dir, cache.key_for(answer_module(99))))
    assert holder.acquire()
    try:
        cleared = run_cli("clear", "--cache-dir", str(root))
    finally:
        holder.release()
    assert cleared.returncode == 1
    assert "1 entry stays: 1 held by a writer now" in cleared.stderr
    assert "immutable" not in cleared.stderr


def test_verify_and_doctor_name_an_empty_root_every_load_refuses(tmp_path: Path) -> None:
    # Found by an outside reader: an empty world-writable directory as the root passed verify ("ok") and doctor
    # ("nothing to do") while every load refused it.
    root = tmp_path / "shared-empty"
    root.mkdir()
    root.chmod(0o777)
    try:
        with pytest.raises(wasmcache.UnsafeCacheError):
            wasmcache.ModuleCache(root).load(answer_module(71))
        checked = run_cli("verify", "--cache-dir", str(root))
        assert checked.returncode == 1
        assert f"unsafe: {root}: cache root is world-writable: loads refuse it; fix: chmod o-w {root}" in checked.stdout
        doctor = run_cli("doctor", "--cache-dir", str(root))
        assert doctor.returncode == 1
        assert f"danger: {root}: unsafe: cache root is world-writable" in doctor.stdout
        assert "nothing to do" not in doctor.stdout
    finally:
        root.chmod(0o700)
    assert run_cli("verify", "--cache-dir", str(root)).returncode == 0


def test_doctor_names_a_max_size_setting_that_stops_every_command(root: Path) -> None:
    # Found by an outside reader: with WASMCACHE_MAX_SIZE=bogus, run, compile, gc and stats all failed while
    # doctor said "no problems found".
    wasmcache.ModuleCache(root).load(answer_module(72))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASMCACHE_")} | {"WASMCACHE_MAX_SIZE": "bogus"}
    doctor = subprocess.run([sys.executable, "-m", "wasmcache.cli", "doctor", "--cache-dir", str(root)],
                            capture_output=True, text=True, env=env, timeout=120, check=False)
    assert doctor.returncode == 1
    assert "danger: $WASMCACHE_MAX_SIZE: size 'bogus'" in doctor.stdout
    assert "fix: set it to a size such as 2G or 500M, or unset it" in doctor.stdout
    # Found by the second outside reader: 0 or 1K, which keeps nothing, passed as "no problems found".
    for useless in ("0", "1K"):
        doctor = subprocess.run([sys.executable, "-m", "wasmcache.cli", "doctor", "--cache-dir", str(root)],
                                capture_output=True, text=True, timeout=120, check=False,
                                env={**env, "WASMCACHE_MAX_SIZE": useless})
        assert doctor.returncode == 0  # a warning: it works, uselessly
        assert "warning: $WASMCACHE_MAX_SIZE: " in doctor.stdout
        assert "evicted as soon as they are stored" in doctor.stdout


def test_stats_counts_the_root_when_its_usage_record_cannot_be_read(root: Path) -> None:
    # Found by an outside reader: without a readable usage record (another user's root), stats said "size 0 B"
    # on the line before "3 entries (39.9 KiB)".
    from wasmcache._maintenance import scan_usage

    cache = wasmcache.ModuleCache(root)
    for answer in (81, 82):
        cache.load(answer_module(answer))
    (root / "usage").unlink()
    stats = json.loads(run_cli("stats", "--json", "--cache-dir", str(root)).stdout)
    assert (stats["entries"], stats["size_bytes"]) == scan_usage(root)
    assert stats["size_bytes"] > 0


def test_verify_words_a_link_where_an_entry_belongs_and_a_directory_that_is_not_a_root(
        root: Path, tmp_path: Path) -> None:
    # Found by an outside reader: a link where an entry belongs was "cannot open the entry safely: Too many levels
    # of symbolic links"; verify of a directory that is not a root was "refusing to list it".
    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(91))
    entry = cache.entry_path(cache.key_for(answer_module(91)))
    target = tmp_path / "precious.txt"
    target.write_text("mine")
    entry.unlink()
    entry.symlink_to(target)
    checked = run_cli("verify", "--cache-dir", str(root))
    assert f"corrupt: {entry}: the entry is a symbolic link (never followed)" in checked.stdout
    other = tmp_path / "not-a-root"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    refused = run_cli("verify", "--cache-dir", str(other))
    assert refused.returncode == 2
    assert "refusing to verify it" in refused.stderr
    assert target.read_text() == "mine"


def test_a_users_directory_named_like_a_namespace_is_foreign_not_mismatched(root: Path) -> None:
    # Found by an outside reader: a directory named like a namespace holding only the user's file was a "danger:
    # mismatched" whose fix (`wasmcache clear`) left it as it was; the finding came back after the fix.
    wasmcache.ModuleCache(root).load(answer_module(93))
    lookalike = root / ("ns-" + "0123456789abcdef" * 2)
    lookalike.mkdir()
    (lookalike / "keep.txt").write_text("mine")
    checked = run_cli("verify", "--cache-dir", str(root))
    assert f"foreign: {lookalike}: named like a namespace, but holds nothing wasmcache wrote" in checked.stdout
    assert "mismatched" not in checked.stdout
    assert run_cli("clear", "--cache-dir", str(root)).returncode == 0
    assert (lookalike / "keep.txt").read_text() == "mine"


def test_a_root_that_cannot_be_read_is_one_line_saying_so(root: Path) -> None:
    # Found by an outside reader: --cache-dir naming a directory this user cannot read got click's three-line usage
    # error; without click's check, the commands said "no wasmcache-layout file", which is not what is wrong.
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to drop the capability that reads any directory")
    wasmcache.ModuleCache(root).load(answer_module(94))
    root.chmod(0)
    try:
        for command in ("stats", "verify", "ls", "gc"):
            said = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable,
                                   "-m", "wasmcache.cli", command, "--cache-dir", str(root)],
                                  capture_output=True, text=True, check=False, timeout=120)
            assert said.returncode == 2, (command, said.stderr)
            assert said.stderr.count("\n") == 1, (command, said.stderr)
            assert f"{root}: cannot be read (Permission denied" in said.stderr, (command, said.stderr)
    finally:
        root.chmod(0o700)


def test_gc_removes_a_record_of_an_interrupted_publication_but_never_a_file_that_only_has_its_name(
        root: Path) -> None:
    # Found by an outside reader: a file of the reader's own, named like a record (`<64 hex>.rec`, holding `{}`),
    # was deleted by a plain gc as "a record of an interrupted publication".
    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(95))
    entry = cache.entry_path(cache.key_for(answer_module(95)))
    interrupted = entry.with_suffix(".rec")
    entry.unlink()  # what a writer killed between its record and its rename leaves: a record of ours, alone
    users = cache.namespace_dir / ("b" * 64 + ".rec")
    users.write_text("{}")
    doctor = run_cli("doctor", "--cache-dir", str(root)).stdout
    assert f"{interrupted}: record of an interrupted publication" in doctor
    assert f"{users}: record of an interrupted publication" not in doctor
    cache.gc()
    assert not interrupted.exists()
    assert users.read_text() == "{}"


def test_gc_reports_the_quarantine_it_empties_and_the_entries_it_sets_aside(root: Path) -> None:
    # Found by an outside reader: gc removed a quarantined copy and reported "freed_bytes": 0, and moved an entry
    # file no record vouched for into quarantine/ without a word.
    from wasmcache._maintenance import scan_usage

    cache = wasmcache.ModuleCache(root)
    for answer in (96, 97):
        cache.load(answer_module(answer))
    bad = cache.entry_path(cache.key_for(answer_module(96)))
    _damage(bad)
    assert cache.verify(fix=True).fixed == 1  # a quarantined copy, kept a day
    lone = cache.entry_path(cache.key_for(answer_module(97)))
    lone.with_suffix(".rec").unlink()  # an entry nothing vouches for
    before = scan_usage(root)[1]
    collected = json.loads(run_cli("gc", "--json", "--max-size", "1", "--cache-dir", str(root)).stdout)
    assert collected["set_aside"] == 1
    assert collected["evicted_entries"] == 0
    # what left the root, quarantine included (and the note gc wrote beside the file it set aside, removed too)
    assert collected["freed_bytes"] >= before - scan_usage(root)[1] > 0


def test_an_empty_namespace_a_writer_left_is_a_warning_gc_settles_not_a_danger_clear_would_settle(root: Path) -> None:
    # Found by the second outside reader: a writer stopped between making a new namespace and its engine file
    # left a directory verify and doctor called a danger, advising `wasmcache clear`, which would remove every good
    # entry of every other namespace; gc removes it without losing anything.
    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(101))
    left = root / ("ns-" + "f" * 32)
    left.mkdir()
    (left / "engine.a1b2c3d4e5f6.tmp").write_bytes(b"half an engine file")
    checked = run_cli("verify", "--cache-dir", str(root)).stdout
    assert f"orphan: {left}: an empty namespace a writer left when it stopped; fix: `wasmcache gc` removes it" \
        in checked
    doctor = run_cli("doctor", "--cache-dir", str(root))
    assert doctor.returncode == 0  # a warning, not a danger
    assert "wasmcache clear" not in doctor.stdout
    cache.gc()
    assert not left.exists()
    assert cache.stats().entries == 1


def test_a_root_a_first_load_stopped_making_reads_as_empty_and_the_next_load_completes_it(tmp_path: Path) -> None:
    # Found by the second outside reader: a first run killed while making the root left CACHEDIR.TAG and the
    # marker's temp file; verify, doctor, gc, ls, stats and clear refused it ("not a wasmcache cache root", exit
    # 2) while the next load adopted it.
    root = tmp_path / "cache"
    root.mkdir()
    (root / "CACHEDIR.TAG").write_text("Signature: 8a477f597d28d172789f06886806bc55\n")
    (root / "wasmcache-layout.a1b2c3d4e5f6.tmp").write_text("wasm")
    for command in ("verify", "doctor", "gc", "ls", "stats", "clear"):
        said = run_cli(command, "--cache-dir", str(root))
        assert said.returncode == 0, (command, said.stdout, said.stderr)
    cache = wasmcache.ModuleCache(root)
    assert call_answer(cache.engine, cache.load(answer_module(102))) == 102
    assert (root / "wasmcache-layout").exists()
    assert run_cli("verify", "--cache-dir", str(root)).returncode == 0


def test_a_namespace_whose_own_write_bit_is_off_gets_chmod_from_gc_and_doctor(root: Path) -> None:
    # Found by the second outside reader: for a namespace at mode 0500 gc guessed "a read-only mount, chattr +i"
    # and doctor found no problem.
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to drop the capability that writes any directory")
    cache = wasmcache.ModuleCache(root)
    cache.load(answer_module(103))
    cache.namespace_dir.chmod(0o500)
    try:
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable,
                                   "-m", "wasmcache.cli", *args, "--cache-dir", str(root)],
                                  capture_output=True, text=True, check=False, timeout=120)
        collected = cli("gc", "--max-size", "0")
        assert f"cannot be written (its mode; fix: chmod u+w {cache.namespace_dir})" in collected.stdout
        doctor = cli("doctor")
        assert f"{cache.namespace_dir}: namespace cannot be written (its mode)" in doctor.stdout
        assert f"fix: chmod u+w {cache.namespace_dir}" in doctor.stdout
    finally:
        cache.namespace_dir.chmod(0o700)
    assert "chmod u+w" not in run_cli("doctor", "--cache-dir", str(root)).stdout


def test_a_root_behind_a_directory_this_user_may_not_enter_is_one_it_cannot_reach(tmp_path: Path) -> None:
    # Found by the second outside reader: `run` said "cannot create cache root" for a root that exists, behind a
    # directory the user may not enter.
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to drop the capability that enters any directory")
    root = tmp_path / "locked" / "cache"
    wasmcache.ModuleCache(root).load(answer_module(104))
    wasm = tmp_path / "answer.wasm"
    wasm.write_bytes(answer_module(104))
    (tmp_path / "locked").chmod(0)
    try:
        ran = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m",
                              "wasmcache.cli", "run", "--cache-dir", str(root), "--invoke", "answer", str(wasm)],
                             capture_output=True, text=True, check=False, timeout=120)
    finally:
        (tmp_path / "locked").chmod(0o700)
    assert (ran.returncode, ran.stdout) == (0, "104\n"), ran.stderr
    assert f"cannot reach cache root {root} (Permission denied); nothing will be cached" in ran.stderr
    assert "cannot create" not in ran.stderr
