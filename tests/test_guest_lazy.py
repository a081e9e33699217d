"""The automatic drop-in opens its cache root at the first load that needs it, never at `import wasmtime`.

A guest leaves no trace (issue 14): a program run under `wasmcache exec` or $WASMCACHE_AUTO that imports
wasmtime and loads nothing must not create the root, ~/.cache or a missing $HOME, nor warn about a root it
never needed. Every test runs real programs with a fresh HOME and compares them with the same program
unwrapped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from conftest import mounted_tmpfs, remount_read_only

if TYPE_CHECKING:
    from collections.abc import Iterator

TESTS = str(Path(__file__).parent)

# Knows nothing of wasmcache: imports wasmtime, builds an engine, loads nothing.
IMPORTS_ONLY = """
import sys, wasmtime
engine = wasmtime.Engine()
print("engine", type(engine).__name__)
sys.stderr.write("stderr of its own\\n")
"""

# Says on stderr when it has imported wasmtime, then loads modules three ways (two engines).
LOADS = """
import os, sys, wasmtime
engine = wasmtime.Engine()
sys.stderr.write("imported\\n")
sys.stderr.flush()
wat = '(module (func (export "f") (result i32) i32.const 42))'
module = wasmtime.Module(engine, wasmtime.wat2wasm(wat))
wasmtime.Module(wasmtime.Engine(), wat)
own = os.path.join(sys.argv[1], "own.cwasm")
with open(own, "wb") as f:
    f.write(module.serialize())
module = wasmtime.Module.deserialize_file(engine, own)
store = wasmtime.Store(engine)
print(wasmtime.Instance(store, module, []).exports(store)["f"](store))
sys.stderr.write("done\\n")
"""


def guest_env(home: Path, tmp: Path, **extra: str) -> dict[str, str]:
    """A new user's environment: this HOME, no XDG_* and no WASMCACHE_* but `extra`, temporary files in `tmp`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WASMCACHE_", "XDG_"))}
    # Kept after ours: `make mutants` puts its mutated copy of the package there.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))
    env.update(HOME=str(home), TMPDIR=str(tmp), **extra)
    return env


def run_as(how: str, program: Path, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """`program` unwrapped ("bare"), under `wasmcache exec` ("exec") or with $WASMCACHE_AUTO=1 ("auto")."""
    argv = [sys.executable, str(program), *args]
    if how == "exec":
        argv = [sys.executable, "-m", "wasmcache.cli", "exec", *argv]
    elif how == "auto":
        env = {**env, "WASMCACHE_AUTO": "1"}
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=120, check=False)


def tree(top: Path) -> list[tuple[str, int]]:
    """Every path under `top` with its size (directories: -1): what a run wrote there."""
    found = []
    for directory, subdirs, files in os.walk(top):
        found += [(os.path.join(directory, d), -1) for d in subdirs]
        found += [(os.path.join(directory, f), os.lstat(os.path.join(directory, f)).st_size) for f in files]
    return sorted(found)


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """tmp_path with the two programs, a working directory and a TMPDIR (empty: what a run writes shows)."""
    (tmp_path / "programs").mkdir()
    (tmp_path / "programs" / "imports.py").write_text(IMPORTS_ONLY)
    (tmp_path / "programs" / "loads.py").write_text(LOADS)
    for name in ("work", "tmp", "out"):
        (tmp_path / name).mkdir()
    return tmp_path


@pytest.fixture
def read_only_home(tmp_path: Path) -> Iterator[Path]:
    """An existing, empty HOME nothing can be written into: a read-only tmpfs (as root, who may write
    anywhere else), else a directory without write permission."""
    if os.geteuid() != 0:
        home = tmp_path / "ro-home"
        home.mkdir(mode=0o555)
        try:
            yield home
        finally:
            home.chmod(0o755)
        return
    with mounted_tmpfs(tmp_path / "ro-home", "size=1m") as home:
        remount_read_only(home)
        yield home


@pytest.mark.parametrize("how", ["exec", "auto"])
def test_a_program_that_only_imports_wasmtime_leaves_no_trace_not_even_a_home(place: Path, how: str) -> None:
    home = place / "home"  # does not exist: a fresh user, or a service with HOME=/nonexistent
    env = guest_env(home, place / "tmp")
    program = place / "programs" / "imports.py"
    bare = run_as("bare", program, env=env, cwd=place / "work")
    assert bare.returncode == 0, bare.stderr
    before = tree(place)
    guest = run_as(how, program, env=env, cwd=place / "work")
    assert (guest.returncode, guest.stdout, guest.stderr) == (bare.returncode, bare.stdout, bare.stderr)
    assert not home.exists()
    assert tree(place) == before  # no root, no ~/.cache, nothing in the working directory nor in TMPDIR
    # Control: the drop-in was there, and does create the root under the same HOME once a module is loaded (and
    # the home directory exists: one that does not is never made, see test_a_missing_home_directory_is_never_created).
    home.mkdir()
    loads = run_as(how, place / "programs" / "loads.py", str(place / "out"), env=env, cwd=place / "work")
    assert loads.returncode == 0, loads.stderr
    assert list((home / ".cache" / "wasmcache").glob("ns-*/*.cwasm"))


@pytest.mark.parametrize("how", ["exec", "auto"])
def test_a_program_that_only_imports_wasmtime_hears_nothing_of_a_read_only_home(
        place: Path, read_only_home: Path, how: str) -> None:
    env = guest_env(read_only_home, place / "tmp")
    program = place / "programs" / "imports.py"
    bare = run_as("bare", program, env=env, cwd=place / "work")
    assert bare.returncode == 0, bare.stderr
    guest = run_as(how, program, env=env, cwd=place / "work")
    assert (guest.returncode, guest.stdout, guest.stderr) == (bare.returncode, bare.stdout, bare.stderr)
    assert not list(read_only_home.iterdir())


@pytest.mark.parametrize("how", ["exec", "auto"])
def test_a_program_that_loads_under_a_read_only_home_is_warned_once_when_it_loads(
        place: Path, read_only_home: Path, how: str) -> None:
    env = guest_env(read_only_home, place / "tmp")
    program = place / "programs" / "loads.py"
    bare = run_as("bare", program, str(place / "out"), env=env, cwd=place / "work")
    assert bare.returncode == 0, bare.stderr
    assert bare.stderr == b"imported\ndone\n"
    guest = run_as(how, program, str(place / "out"), env=env, cwd=place / "work")
    assert (guest.returncode, guest.stdout) == (bare.returncode, bare.stdout), guest.stderr
    lines = guest.stderr.splitlines(keepends=True)
    ours = [line for line in lines if line.startswith(b"wasmcache[")]
    assert len(ours) == 1, guest.stderr  # three loads, two engines: said once
    assert b"warning: drop-in cannot use its cache root" in ours[0]
    assert b"read-only file system" in ours[0] or b"not writable" in ours[0]
    # Said when the first load needed the root, not when the program imported wasmtime.
    assert lines == [b"imported\n", ours[0], b"done\n"], guest.stderr
    assert not list(read_only_home.iterdir())


# An explicit install() is no guest: the program asked for the cache, and hears at the call what is wrong.
INSTALLS = """
import logging, sys, wasmcache
logging.basicConfig()
try:
    wasmcache.install(sys.argv[1] if len(sys.argv) > 1 else None)
except wasmcache.CacheError as exc:
    print("refused:", type(exc).__name__)
else:
    sys.stderr.write("installed\\n")
"""


def test_an_explicit_install_still_judges_its_root_at_the_call(place: Path, read_only_home: Path) -> None:
    program = place / "programs" / "installs.py"
    program.write_text(INSTALLS)
    env = guest_env(read_only_home, place / "tmp")
    a_file = place / "a-file"
    a_file.write_text("mine")
    refused = run_as("bare", program, str(a_file), env=env, cwd=place / "work")
    assert (refused.returncode, refused.stdout) == (0, b"refused: NotACacheError\n"), refused.stderr
    assert a_file.read_text() == "mine"
    warned = run_as("bare", program, env=env, cwd=place / "work")  # the default root, under a read-only HOME
    assert warned.returncode == 0, warned.stderr
    lines = warned.stderr.splitlines()
    assert len(lines) == 2, warned.stderr
    assert b"drop-in cannot use its cache root" in lines[0]  # through the program's logging, before any load
    assert lines[1] == b"installed"


CHDIR_THEN_LOADS = """
import os, wasmtime
os.chdir("elsewhere")
os.environ["WASMCACHE_DIR"] = "moved"
wasmtime.Module(wasmtime.Engine(), "(module)")
"""


def test_a_relative_root_is_where_it_was_when_the_program_imported_wasmtime(place: Path) -> None:
    # Opened at the first load, but resolved at the import: a program that changes directory (or the
    # environment) in between does not scatter roots.
    (place / "work" / "elsewhere").mkdir()
    program = place / "programs" / "chdir.py"
    program.write_text(CHDIR_THEN_LOADS)
    env = guest_env(place / "home", place / "tmp", WASMCACHE_DIR="relroot")
    proc = run_as("auto", program, env=env, cwd=place / "work")
    assert (proc.returncode, proc.stderr) == (0, b""), proc.stderr
    assert list((place / "work" / "relroot").glob("ns-*/*.cwasm"))
    assert not (place / "work" / "elsewhere" / "relroot").exists()
    assert not (place / "work" / "elsewhere" / "moved").exists()


# Loads that fail before any module exists: a missing file, a directory, /dev/null as a file to map.
FAILS = """
import sys, wasmtime
engine = wasmtime.Engine()
for call, path in ((wasmtime.Module.from_file, "/nonexistent/app.wasm"), (wasmtime.Module.from_file, sys.argv[1]),
                   (wasmtime.Module.deserialize_file, "/nonexistent/app.cwasm"),
                   (wasmtime.Module.deserialize_file, sys.argv[1])):
    try:
        call(engine, path)
    except Exception as exc:
        print(type(exc).__name__, str(exc).splitlines()[0])
"""


@pytest.mark.parametrize("how", ["exec", "auto"])
def test_loads_of_what_is_not_a_file_leave_no_trace_and_fail_as_unwrapped(place: Path, how: str) -> None:
    home = place / "home"
    program = place / "programs" / "fails.py"
    program.write_text(FAILS)
    env = guest_env(home, place / "tmp")
    bare = run_as("bare", program, str(place / "out"), env=env, cwd=place / "work")
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout.count(b"\n") == 4, bare.stdout
    before = tree(place)
    guest = run_as(how, program, str(place / "out"), env=env, cwd=place / "work")
    assert (guest.returncode, guest.stdout, guest.stderr) == (bare.returncode, bare.stdout, bare.stderr)
    assert not home.exists()
    assert tree(place) == before


# What a differential reader found: each prints what happened, for a byte-for-byte comparison with an unwrapped run.
ODD_CALLS = """
import os, sys, threading, typing, wasmtime
engine = wasmtime.Engine()

def attempt(what, call):
    try:
        result = call()
        print(what, "ok", type(result).__name__)
    except BaseException as exc:
        print(what, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")

attempt("zero", lambda: wasmtime.Module.deserialize_file(engine, "/dev/zero"))  # a copy would never end
fifo = os.path.join(sys.argv[1], "fifo")
os.mkfifo(fifo)
def feed():
    try:
        with open(fifo, "wb") as f:
            f.write(b"\x7fELF not an artifact")  # unwrapped, wasmtime cannot map a pipe whatever it holds
    except OSError:
        pass  # the reader closed it (when, depends on the run)
threading.Thread(target=feed, daemon=True).start()
attempt("fifo", lambda: wasmtime.Module.deserialize_file(engine, fifo))
attempt("bytearray-wat", lambda: wasmtime.Module(engine, bytearray(b'(module (func (export "f")))')))
closed = wasmtime.Engine()
closed.close()
attempt("closed-engine", lambda: wasmtime.Module(closed, b"(module)"))
config = wasmtime.Config()
config.target = "x86_64-unknown-linux-musl"
attempt("foreign-target", lambda: wasmtime.Module(wasmtime.Engine(config), b"(module)"))
attempt("hints", lambda: sorted(typing.get_type_hints(wasmtime.Module.from_file)))
print(sorted(typing.get_type_hints(wasmtime.Module.__init__)))
"""


@pytest.mark.parametrize("how", ["exec", "auto"])
def test_odd_calls_fail_or_succeed_as_unwrapped_in_bounded_time_and_leave_no_trace(place: Path, how: str) -> None:
    home = place / "home"
    program = place / "programs" / "odd.py"
    program.write_text(ODD_CALLS)
    env = guest_env(home, place / "tmp")
    runs = {}
    for name in ("bare", how):
        (place / "out").mkdir(exist_ok=True)
        runs[name] = run_as(name, program, str(place / "out"), env=env, cwd=place / "work")
        (place / "out" / "fifo").unlink()
    bare, guest = runs["bare"], runs[how]
    assert bare.returncode == 0, bare.stderr
    assert (guest.returncode, guest.stdout, guest.stderr) == (bare.returncode, bare.stdout, bare.stderr)
    assert not home.exists()  # none of these loads opened the root
