"""bin/wasmcache, the native launcher that serves `wasmcache exec` without starting Python.

Differential: the same command through the launcher (its first run hands `exec` to the Python CLI, which
leaves the plan; the second is served by the launcher alone) and through the Python CLI, on the same cases;
CMD (`env -0`, or a small probe) must see the same environment, byte for byte, the same arguments, the same
signal dispositions, and errors must read the same.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import wasmcache
from wasmcache._dropin_exec import HOOK_DIR, HOOK_ZIP, LAUNCHER_PLAN, hook_entry
from wasmcache._dropin_exec import PYTHON_CLI as CLI_NAME

SRC = Path(wasmcache.__file__).resolve().parents[1]  # this checkout's, or the copy `make mutants` made
LAUNCHER_SOURCE = SRC / "wasmcache-launcher.c"
# The Python CLI from SRC, whatever the environment of a case says (PYTHONPATH is one of the cases).
PYTHON_CLI = [sys.executable, "-c",
              f"import sys; sys.path.insert(0, {str(SRC)!r}); from wasmcache.cli import main; main()"]
ENV = shutil.which("env") or "/usr/bin/env"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's /proc for the probes")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The launcher compiled from SRC, as hatch_build.py compiles it (a C compiler is on every machine we test)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    assert compiler, "no C compiler: the launcher's tests need one (Debian: gcc)"
    output = tmp_path_factory.mktemp("launcher") / "wasmcache"
    subprocess.run([compiler, "-O2", "-Wall", "-Werror", "-o", str(output), str(LAUNCHER_SOURCE)], check=True)
    return output


def make_bindir(bindir: Path, compiled: Path, src: Path = SRC) -> Path:
    """A bin directory as an install makes one: the launcher `wasmcache`, the Python CLI `.wasmcache-python`
    (running the package in `src`)."""
    bindir.mkdir(exist_ok=True)
    shutil.copy(compiled, bindir / "wasmcache")
    cli = bindir / CLI_NAME
    cli.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(src)!r})\n"
                   "from wasmcache.cli import main\nsys.exit(main())\n")
    cli.chmod(0o755)
    return bindir


@pytest.fixture
def bindir(tmp_path: Path, compiled: Path) -> Path:
    return make_bindir(tmp_path / "bin", compiled)


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's environment: no XDG_* or WASMCACHE_* unless given, this checkout importable."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def run(argv: list[str], env: dict[str, str] | dict[bytes, bytes], cwd: Path,
        **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=60, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


def raw(proc: subprocess.CompletedProcess[bytes]) -> list[bytes]:
    """CMD's environment as `env -0` printed it: every entry, in order, as bytes."""
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return [item for item in proc.stdout.split(b"\0") if item]


def seen(proc: subprocess.CompletedProcess[bytes]) -> dict[str, str]:
    pairs = [item.split(b"=", 1) for item in raw(proc)]
    return {os.fsdecode(k): os.fsdecode(v) for k, v in pairs}


def launcher(bindir: Path, *words: str) -> list[str]:
    return [str(bindir / "wasmcache"), "exec", *words]


def both(bindir: Path, words: list[str], env: dict[str, str] | dict[bytes, bytes],
         cwd: Path) -> tuple[list[bytes], ...]:
    """What CMD sees, entry by entry: launcher (handed to Python), launcher (alone), Python CLI."""
    first = raw(run(launcher(bindir, *words), env, cwd))
    assert (bindir / LAUNCHER_PLAN).is_file(), "the Python CLI left no plan for the launcher"
    fast = raw(run(launcher(bindir, *words), env, cwd))
    python = raw(run([*PYTHON_CLI, "exec", *words], env, cwd))
    return first, fast, python


CASES: dict[str, tuple[list[str], dict[str, str]]] = {
    "plain": ([], {}),
    "xdg": ([], {"XDG_CACHE_HOME": "/srv/cache dir"}),
    "xdg-trailing-slash": ([], {"XDG_CACHE_HOME": "/srv/cache/"}),
    "xdg-root": ([], {"XDG_CACHE_HOME": "/"}),
    "xdg-relative-ignored": ([], {"XDG_CACHE_HOME": "relative/cache"}),
    "wasmcache-dir-relative": ([], {"WASMCACHE_DIR": "some root"}),
    "wasmcache-dir-empty": ([], {"WASMCACHE_DIR": ""}),
    "wasmcache-dir-double-slash": ([], {"WASMCACHE_DIR": "//srv//./a/../b/"}),
    "wasmcache-dir-triple-slash": ([], {"WASMCACHE_DIR": "///srv/.."}),
    "cache-dir-tilde": (["--cache-dir=~/roots/[a]"], {}),
    "cache-dir-tilde-alone": (["--cache-dir", "~"], {}),
    "cache-dir-tilde-user": (["--cache-dir", "~root/x"], {}),
    "cache-dir-dotdot": (["--cache-dir", "a/../b"], {}),
    "cache-dir-dotdot-above-root": (["--cache-dir", "/../../x/./"], {}),
    "cache-dir-twice": (["--cache-dir", "first", "--cache-dir", "second"], {}),
    "verbose-debug": (["-v", "--debug"], {}),
    "verbose": (["-v"], {}),
    "pythonpath-empty": ([], {"PYTHONPATH": ""}),
    "pythonpath-kept": ([], {"PYTHONPATH": "/a b::/c"}),
    "pythonpath-has-hook-dir": ([], {"PYTHONPATH": f"/x:{HOOK_DIR}"}),
    "pythonpath-has-hook-zip": ([], {"PYTHONPATH": f"{HOOK_ZIP}:/y"}),
    "double-dash": (["--"], {}),
    "no-home": ([], {"HOME": ""}),
    "empty-home": ([], {"HOME": "="}),
    "home-slash": ([], {"HOME": "/"}),
    "relative-home": ([], {"HOME": "rel home"}),
    "names-a-shell-cannot-hold": ([], {"foo.bar": "1", "BASH_FUNC_f%%": "() {  echo hi\n}", "IFS": ":",
                                       "OPTIND": "7", "PPID": "1", "PWD": "/nowhere", "": ""}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cmd_sees_the_same_environment_through_the_launcher_and_the_python_cli(
        case: str, bindir: Path, tmp_path: Path) -> None:
    words, extra = CASES[case]
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(home, **extra)
    if case == "no-home":
        del env["HOME"]
    elif case == "empty-home":
        env["HOME"] = ""
    env.pop("", None)  # subprocess cannot pass an entry without a name
    work = tmp_path / "work"
    work.mkdir()
    first, fast, python = both(bindir, [*words, ENV, "-0"], env, work)
    assert first == python
    assert fast == python
    wrapped = seen(run([*PYTHON_CLI, "exec", ENV, "-0"], env, work))
    assert wrapped["WASMCACHE_AUTO"] == "1"
    assert {HOOK_ZIP, HOOK_DIR} & set(wrapped["PYTHONPATH"].split(os.pathsep))
    for name, value in env.items():  # everything else passes through untouched
        if name not in ("PYTHONPATH", "WASMCACHE_DIR"):
            assert wrapped[name] == value


def test_bytes_that_are_not_utf8_pass_through_either_way(bindir: Path, tmp_path: Path) -> None:
    env = {b"PATH": os.environb[b"PATH"], b"HOME": os.fsencode(tmp_path) + b"/h\xff\xfe",
           b"NAME\xe9": b"value \xff\x80", b"PYTHONPATH": b"/p\xff:/q"}
    first, fast, python = both(bindir, [ENV, "-0"], env, tmp_path)
    assert fast == python == first
    assert b"NAME\xe9=value \xff\x80" in fast
    assert b"WASMCACHE_DIR=" + os.fsencode(tmp_path) + b"/h\xff\xfe/.cache/wasmcache" in fast


# Starts argv[1:] with exactly the environment entries given after `--` (execve through ctypes: a mapping
# cannot hold a name twice, an entry without `=`, or one without a name).
_RAW_EXECVE = """
import ctypes, os, sys
cut = sys.argv.index("--")
argv, envp = [os.fsencode(a) for a in sys.argv[1:cut]], [os.fsencode(e) for e in sys.argv[cut + 1:]]
libc = ctypes.CDLL(None, use_errno=True)
libc.execve(argv[0], (ctypes.c_char_p * (len(argv) + 1))(*argv, None), (ctypes.c_char_p * (len(envp) + 1))(*envp, None))
sys.exit(99)
"""


def raw_exec(argv: list[str], entries: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return run([sys.executable, "-c", _RAW_EXECVE, *argv, "--", *entries], {}, cwd)


def test_a_name_given_twice_is_passed_once_with_the_value_a_program_would_have_seen(
        bindir: Path, tmp_path: Path) -> None:
    """`A=1 A=2` in the environment: getenv(3) and CPython's os.environ see 1, and so must CMD under exec, through
    the launcher and through the Python CLI; entries with no `=` or no name are left out by both."""
    entries = [f"PATH={os.environ['PATH']}", f"HOME={tmp_path}", "A=1", "A=2", "NOEQ", "=empty",
               f"PYTHONPATH=/first:{HOOK_DIR}", "PYTHONPATH=/second", "WASMCACHE_DIR=/r1", "WASMCACHE_DIR=/r2"]
    show = [sys.executable, "-c", "import os; print(os.environ['A'])"]
    assert raw_exec(show, entries, tmp_path).stdout == b"1\n"  # the control: what the program sees unwrapped
    raw_exec([str(bindir / "wasmcache"), "exec", "true"], entries, tmp_path)  # the plan
    ours = raw(raw_exec([str(bindir / "wasmcache"), "exec", ENV, "-0"], entries, tmp_path))
    python = raw(raw_exec([*PYTHON_CLI, "exec", ENV, "-0"], entries, tmp_path))
    assert ours == python
    assert [e for e in ours if e.split(b"=", 1)[0] in (b"A", b"PYTHONPATH", b"WASMCACHE_DIR")] == [
        b"A=1", b"PYTHONPATH=/first:" + os.fsencode(HOOK_DIR), b"WASMCACHE_DIR=/r1"]
    assert not [e for e in ours if e in (b"NOEQ", b"=empty")]
    assert raw_exec([str(bindir / "wasmcache"), "exec", *show], entries, tmp_path).stdout == b"1\n"


def test_a_script_without_a_shebang_is_found_in_an_empty_path_entry_as_execvp_finds_it(
        bindir: Path, tmp_path: Path) -> None:
    script = tmp_path / "noshe"
    script.write_text('echo "ran: $1"\n')
    script.chmod(0o755)
    run(launcher(bindir, "true"), clean_env(tmp_path), tmp_path)
    for path in ("", ":/nonexistent", "/nonexistent::/usr/bin"):
        env = clean_env(tmp_path, PATH=path)
        control = run([ENV, "noshe", "a"], env, tmp_path)  # env(1): execvp
        assert control.stdout == b"ran: a\n", path
        for argv in (launcher(bindir, "noshe", "a"), [*PYTHON_CLI, "exec", "noshe", "a"]):
            proc = run(argv, env, tmp_path)
            assert (proc.returncode, proc.stdout) == (0, b"ran: a\n"), (path, argv, proc.stderr)


def test_a_root_spelled_with_an_unknown_user_is_refused_in_one_line(bindir: Path, tmp_path: Path) -> None:
    run(launcher(bindir, "true"), clean_env(tmp_path), tmp_path)
    for words, extra in ((["--cache-dir", "~nosuchuser/x", "exec", "true"], {}),
                         (["exec", "true"], {"WASMCACHE_DIR": "~nosuchuser"}),
                         (["--cache-dir", "~nosuchuser", "stats"], {})):
        proc = run([str(bindir / "wasmcache"), *words], clean_env(tmp_path, **extra), tmp_path)
        assert proc.returncode == 2, words
        assert proc.stderr.count(b"\n") == 1
        assert b"cannot expand '~nosuchuser'" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"], "a directory named ~nosuchuser was made"


def test_a_relative_root_is_made_absolute_from_the_physical_directory(bindir: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    env = clean_env(tmp_path, PWD=str(link))
    _first, fast, python = both(bindir, ["--cache-dir", "r", ENV, "-0"], env, link)
    assert fast == python
    assert b"WASMCACHE_DIR=" + os.fsencode(os.path.join(os.path.realpath(link), "r")) in fast


def test_the_launcher_is_served_without_python_once_the_plan_exists_and_falls_back_when_it_must(
        bindir: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    assert run(launcher(bindir, "true"), env, tmp_path).returncode == 0  # handed to Python, which leaves the plan
    cli = bindir / CLI_NAME
    real_cli = cli.read_text()
    cli.write_text('#!/bin/sh\necho fell back: "$@" >&2\nexit 99\n')
    for words in (["-v", "exec", ENV, "-0"], ["--cache-dir", "r", "exec", "--debug", "--", ENV, "-0"]):
        served = run([str(bindir / "wasmcache"), *words], env, tmp_path)
        assert served.returncode == 0, words
        assert served.stderr == b"", words
    for words in ([], ["--help"], ["stats"], ["--cache-dir=", "exec", "true"], ["-v", "stats"], ["exec"],
                  ["exec", "--help"], ["exec", "--unknown", "true"], ["exec", "no-such-command-here"],
                  ["exec", "--cache-dir=", "true"], ["exec", "--cache-dir", "", "true"],
                  ["exec", "--cache-dir", "~nobody/x", "true"], ["exec", "--cache-dir"], ["exec", ""],
                  ["exec", str(tmp_path)]):
        proc = run([str(bindir / "wasmcache"), *words], env, tmp_path)
        assert proc.returncode == 99, words
        assert proc.stderr == (" ".join(["fell back:", *words]) + "\n").encode(), words
    # A stale plan (a source newer than the zip, as after an upgrade) goes to Python, which writes it anew.
    plan = (bindir / LAUNCHER_PLAN).read_text().splitlines()
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "hook.zip").write_bytes(b"")
    for name in ("a.py", "b.py", "c.py"):
        (fake / name).write_text("")
    os.utime(fake / "hook.zip", (1, 1))
    (bindir / LAUNCHER_PLAN).write_text("\n".join([str(fake / "hook.zip"), plan[1], *(str(fake / n) for n in
                                                                                    ("a.py", "b.py", "c.py"))]) + "\n")
    assert run(launcher(bindir, "true"), env, tmp_path).returncode == 99
    for broken in ("", "only one line\n", plan[0] + "\n"):  # a truncated plan is no plan
        (bindir / LAUNCHER_PLAN).write_text(broken)
        assert run(launcher(bindir, "true"), env, tmp_path).returncode == 99
    cli.write_text(real_cli)
    assert run(launcher(bindir, "true"), env, tmp_path).returncode == 0
    assert (bindir / LAUNCHER_PLAN).read_text().splitlines()[0] == hook_entry()


def test_a_launcher_reached_through_a_symlink_reads_the_plan_beside_its_file(bindir: Path, tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    (links / "wasmcache").symlink_to(bindir / "wasmcache")
    env = clean_env(tmp_path)
    first = raw(run([str(links / "wasmcache"), "exec", ENV, "-0"], env, tmp_path))
    assert (bindir / LAUNCHER_PLAN).is_file()
    assert not (links / LAUNCHER_PLAN).exists()
    assert raw(run([str(links / "wasmcache"), "exec", ENV, "-0"], env, tmp_path)) == first
    # Found on PATH through the link, under its own name: the same.
    on_path = clean_env(tmp_path, PATH=f"{links}:{os.environ['PATH']}")
    assert seen(run(["wasmcache", "exec", ENV, "-0"], on_path, tmp_path))["WASMCACHE_AUTO"] == "1"


def test_errors_read_the_same_through_the_launcher_and_the_python_cli(bindir: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    run(launcher(bindir, "true"), env, tmp_path)  # the plan exists: the launcher serves
    not_executable = tmp_path / "data file"
    not_executable.write_text("#!/bin/sh\necho no\n")
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"\x7fELF" + bytes(60))
    foreign.chmod(0o755)
    for words in (["no-such-command-here"], [str(not_executable)], [str(tmp_path)], [], ["--bogus", "true"], [""],
                  [str(foreign)], ["x" * 5000], [os.fsdecode(b"\xff")]):
        ours = run(launcher(bindir, *words), env, tmp_path)
        python = run([*PYTHON_CLI, "exec", *words], env, tmp_path)
        assert (ours.returncode, ours.stdout, ours.stderr) == (python.returncode, python.stdout, python.stderr), words
        assert ours.returncode != 0
    # A name that is not UTF-8 is printed as its bytes, as a shell prints it.
    unnamed = run(launcher(bindir, os.fsdecode(b"\xff")), env, tmp_path)
    assert unnamed.stderr == b"wasmcache: exec: \xff: command not found\n"


def test_arguments_reach_cmd_unchanged(bindir: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    run(launcher(bindir, "true"), env, tmp_path)
    words = ["printf", "[%s]\\n", "a b", "", "-v", "--", "exec", "\u00e9", "*", "$HOME"]
    ours = run(launcher(bindir, *words), env, tmp_path)
    python = run([*PYTHON_CLI, "exec", *words], env, tmp_path)
    assert ours.stdout == python.stdout == "".join(f"[{w}]\n" for w in words[2:]).encode()


def test_an_executable_file_without_a_shebang_runs_as_a_shell_script_either_way(bindir: Path, tmp_path: Path) -> None:
    script = tmp_path / "old script"
    script.write_text('echo "ran as a script: $0 $1"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    env = clean_env(tmp_path)
    run(launcher(bindir, "true"), env, tmp_path)
    ours = run(launcher(bindir, str(script), "x y"), env, tmp_path)
    python = run([*PYTHON_CLI, "exec", str(script), "x y"], env, tmp_path)
    assert ours.returncode == python.returncode == 0
    assert ours.stdout == python.stdout == f"ran as a script: {script} x y\n".encode()


def _signals(proc: subprocess.CompletedProcess[bytes], field: str) -> int:
    line = next(x for x in proc.stdout.decode().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1], 16)


def test_cmd_gets_sigpipe_and_sigxfsz_back_even_when_the_caller_ignores_them(bindir: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    run(launcher(bindir, "true"), env, tmp_path)
    probe = ["cat", "/proc/self/status"]

    def ignoring() -> None:
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup's: kept, by both
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})

    bits = (1 << (signal.SIGPIPE - 1)) | (1 << (signal.SIGXFSZ - 1))
    hup, usr1 = 1 << (signal.SIGHUP - 1), 1 << (signal.SIGUSR1 - 1)
    seen_by = []
    for argv in (launcher(bindir, *probe), [*PYTHON_CLI, "exec", *probe]):
        plain = run(argv, env, tmp_path)
        ignored = run(argv, env, tmp_path, preexec_fn=ignoring, restore_signals=False)
        assert _signals(plain, "SigIgn") & bits == 0
        assert _signals(ignored, "SigIgn") & bits == 0, argv
        seen_by.append((_signals(ignored, "SigIgn") & hup, _signals(ignored, "SigBlk") & usr1))
    assert seen_by[0] == seen_by[1] == (hup, usr1)
    # The control: without exec's reset, CMD inherits the caller's ignored SIGPIPE.
    bare = run(["cat", "/proc/self/status"], env, tmp_path, preexec_fn=ignoring, restore_signals=False)
    assert _signals(bare, "SigIgn") & bits == bits


def test_the_installed_commands_are_the_launcher_and_the_python_cli_beside_it(tmp_path: Path) -> None:
    installed = Path(sys.executable).with_name("wasmcache")
    if not installed.exists():
        pytest.skip("no commands beside this Python (not installed with pip)")
    assert installed.read_bytes()[:4] == b"\x7fELF", "bin/wasmcache is not the native launcher: reinstall (make venv)"
    cli = installed.with_name(CLI_NAME)
    assert cli.read_text().startswith(f"#!{sys.executable}")
    help_text = subprocess.run([str(installed), "--help"], capture_output=True, text=True, check=True).stdout
    assert "Usage: wasmcache" in help_text
    env = clean_env(tmp_path)
    assert run([str(installed), "exec", "true"], env, tmp_path).returncode == 0
    assert (installed.parent / LAUNCHER_PLAN).read_text().splitlines()[0] == hook_entry()


def _wheel(tmp_path: Path, **extra: str) -> zipfile.ZipFile:
    out = tmp_path / "dist"
    env = {**os.environ, **extra}
    env.pop("PYTHONPATH", None)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(SRC.parent)], check=True, env=env, capture_output=True, timeout=300)
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


def test_a_wheel_carries_the_launcher_and_without_a_compiler_the_python_cli_in_its_place(tmp_path: Path) -> None:
    pytest.importorskip("hatchling")
    if not (SRC.parent / "hatch_build.py").is_file():
        pytest.skip("not a checkout")
    native = _wheel(tmp_path / "native")
    scripts = {Path(n).name: n for n in native.namelist() if "/scripts/" in n}
    assert sorted(scripts) == [CLI_NAME, "wasmcache"]
    assert native.read(scripts["wasmcache"])[:4] == b"\x7fELF"
    assert native.read(scripts[CLI_NAME]).startswith(b"#!python\n")
    assert "-py3-none-linux_" in Path(native.filename or "").name
    plain = _wheel(tmp_path / "plain", WASMCACHE_NO_LAUNCHER="1")
    scripts = {Path(n).name: n for n in plain.namelist() if "/scripts/" in n}
    assert plain.read(scripts["wasmcache"]) == plain.read(scripts[CLI_NAME])
    assert plain.read(scripts["wasmcache"]).startswith(b"#!python\n")
    assert Path(plain.filename or "").name.endswith("-py3-none-any.whl")


# --- `wasmcache exec` itself, from an outside reader's findings ----------------------------------------------


def test_exec_passes_the_callers_environment_not_pythons_locale_coercion(tmp_path: Path) -> None:
    """Under a C locale Python sets LC_CTYPE=C.UTF-8 for itself (PEP 538); CMD must not inherit it."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C"}
    wrapped = seen(run([*PYTHON_CLI, "exec", ENV, "-0"], env, tmp_path))
    assert "LC_CTYPE" not in wrapped
    assert "LC_ALL" not in wrapped
    assert wrapped["LANG"] == "C"


def test_a_relative_home_still_pins_an_absolute_root(tmp_path: Path) -> None:
    # A relative $HOME is taken as unset (platformdirs' rule): the password database's home, never the working
    # directory's `relhome` (tests/test_new_user.py::test_an_empty_or_relative_home_is_taken_as_unset).
    import pwd

    env = {"PATH": os.environ["PATH"], "HOME": "relhome"}
    wrapped = seen(run([*PYTHON_CLI, "exec", ENV, "-0"], env, tmp_path))
    assert wrapped["WASMCACHE_DIR"] == os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".cache", "wasmcache")


def test_an_empty_cache_dir_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    for words in (["--cache-dir=", "exec", "true"], ["exec", "--cache-dir=", "true"], ["--cache-dir=", "stats"],
                  ["run", "--cache-dir", "", "x.wasm"], ["run", "--cache-dir=", "x.wasm"]):  # run's: found by a reader
        proc = run([*PYTHON_CLI, *words], clean_env(tmp_path), tmp_path)
        assert proc.returncode == 2, words
        assert b"empty path" in proc.stderr
        assert b"Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_exec_of_an_empty_command_name_is_command_not_found(tmp_path: Path) -> None:
    proc = run([*PYTHON_CLI, "exec", ""], clean_env(tmp_path), tmp_path)
    assert (proc.returncode, proc.stderr) == (127, b"wasmcache: exec: '': command not found\n")


def test_a_relative_root_in_a_deleted_directory_is_one_line(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    # The child removes its own working directory (subprocess changes into it first) before it becomes the CLI.
    proc = run([*PYTHON_CLI, "--cache-dir", "rel", "exec", "true"], clean_env(tmp_path), gone,
               preexec_fn=lambda: os.rmdir(os.getcwd()))
    assert not gone.exists()
    assert proc.returncode == 2
    assert proc.stderr.count(b"\n") == 1
    assert b"current directory no longer exists" in proc.stderr


def test_a_launcher_started_with_no_argv_at_all_hands_over_to_the_python_cli(bindir: Path, tmp_path: Path) -> None:
    """execve(path, {NULL}, env) is legal: no argv[0] to reuse, no crash, the CLI's usage."""
    start = ("import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
             "argv = (ctypes.c_char_p * 1)(None); "
             "envp = (ctypes.c_char_p * 3)(b'PATH=' + os.environb[b'PATH'], "
             "b'HOME=' + os.fsencode(sys.argv[2]), None); "
             "libc.execve(os.fsencode(sys.argv[1]), argv, envp); sys.exit(99)")
    proc = run([sys.executable, "-c", start, str(bindir / "wasmcache"), str(tmp_path)], clean_env(tmp_path), tmp_path)
    assert proc.returncode in (0, 2), proc
    assert b"Usage: wasmcache" in proc.stdout + proc.stderr


def test_a_read_only_bin_directory_says_why_exec_starts_python_under_v_and_in_doctor(
        compiled: Path, tmpfs: Path, tmp_path: Path) -> None:
    """A system-wide or image install: the plan cannot be left beside the launcher, so every `exec` goes through
    Python. It still works, and `-v` and `doctor` say so (with what fixes it) instead of staying silent."""
    make_bindir(tmpfs, compiled)
    from conftest import remount_read_only

    remount_read_only(tmpfs)
    env = clean_env(tmp_path)
    quiet = run([str(tmpfs / "wasmcache"), "exec", "true"], env, tmp_path)
    assert (quiet.returncode, quiet.stderr) == (0, b"")
    told = run([str(tmpfs / "wasmcache"), "-v", "exec", "true"], env, tmp_path)
    assert told.returncode == 0
    assert told.stderr.count(b"\n") == 1
    assert b"starts Python each time" in told.stderr
    assert b"read-only" in told.stderr
    assert not (tmpfs / LAUNCHER_PLAN).exists()
    doctor = run([str(tmpfs / "wasmcache"), "doctor"], env, tmp_path)
    assert b"exec: `exec` starts Python each time" in doctor.stdout
    # Where the plan can be left, doctor says nothing about it.
    writable = tmp_path / "bin"
    shutil.copytree(tmpfs, writable)
    run([str(writable / "wasmcache"), "exec", "true"], env, tmp_path)
    assert b"exec:" not in run([str(writable / "wasmcache"), "doctor"], env, tmp_path).stdout


def test_a_copied_launcher_says_in_one_line_that_it_must_stay_beside_the_python_cli(
        bindir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(bindir / "wasmcache", elsewhere / "wasmcache")
    proc = run([str(elsewhere / "wasmcache"), "stats"], clean_env(tmp_path), tmp_path)
    assert proc.returncode == 127
    assert proc.stderr.count(b"\n") == 1
    assert b"ln -s" in proc.stderr


def test_doctor_says_when_wasmcache_was_built_without_its_launcher(bindir: Path, tmp_path: Path) -> None:
    shutil.copy(bindir / CLI_NAME, bindir / "wasmcache")  # what hatch_build.py installs without a C compiler
    env = clean_env(tmp_path)
    assert run([str(bindir / "wasmcache"), "exec", "true"], env, tmp_path).returncode == 0
    assert not (bindir / LAUNCHER_PLAN).exists()
    doctor = run([str(bindir / "wasmcache"), "doctor"], env, tmp_path)
    assert b"built without the native launcher" in doctor.stdout


def test_a_read_only_installation_says_why_exec_starts_python_under_v(
        compiled: Path, tmpfs: Path, tmp_path: Path) -> None:
    """site-packages read-only (a system install used by another user): no hook zip, so no plan either; -v
    says so rather than nothing."""
    shutil.copytree(SRC, tmpfs / "src", ignore=shutil.ignore_patterns("__pycache__", "_hook.zip"))
    from conftest import remount_read_only

    remount_read_only(tmpfs)
    bindir = make_bindir(tmp_path / "bin", compiled, tmpfs / "src")
    env = {**clean_env(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    told = run([str(bindir / "wasmcache"), "-v", "exec", "true"], env, tmp_path)
    assert told.returncode == 0
    assert told.stderr.count(b"\n") == 1, told.stderr
    assert b"is read-only, so the hook zip" in told.stderr
    assert run([str(bindir / "wasmcache"), "exec", "true"], env, tmp_path).stderr == b""


def test_a_command_whose_interpreter_is_missing_is_not_called_not_found(bindir: Path, tmp_path: Path) -> None:
    script = tmp_path / "badinterp"
    script.write_text("#!/nonexistent/interp\necho x\n")
    script.chmod(0o755)
    env = clean_env(tmp_path, PATH=f"{tmp_path}:{os.environ['PATH']}")
    run(launcher(bindir, "true"), env, tmp_path)
    for name in ("badinterp", str(script)):
        ours = run(launcher(bindir, name), env, tmp_path)
        python = run([*PYTHON_CLI, "exec", name], env, tmp_path)
        assert (ours.returncode, ours.stderr) == (python.returncode, python.stderr)
        assert (ours.returncode, ours.stderr) == (127, f"wasmcache: exec: {name}: cannot execute: required file not "
                                                       "found\n".encode())
    assert run(launcher(bindir, "no-such-command-here"), env, tmp_path).stderr.endswith(b": command not found\n")


def test_an_upgrade_that_keeps_old_file_times_still_replaces_the_hook(compiled: Path, tmp_path: Path) -> None:
    """An installer that keeps a package's file times (uv's links from its cache, dpkg) writes new files with
    old times: the hook zip must still be made anew, through the launcher and through the Python CLI alike."""
    src = tmp_path / "src"
    shutil.copytree(SRC, src, ignore=shutil.ignore_patterns("__pycache__", "_hook.zip"))
    bindir = make_bindir(tmp_path / "bin", compiled, src)
    cli = bindir / CLI_NAME
    env = clean_env(tmp_path)
    probe = [sys.executable, "-c", "pass"]
    for first in (True, False):  # the launcher, then the Python CLI, each after its own upgrade
        assert run([str(bindir / "wasmcache"), "exec", "true"], env, tmp_path).returncode == 0  # zip and plan
        assert run([str(bindir / "wasmcache"), "exec", "true"], env, tmp_path).returncode == 0
        site = src / "wasmcache" / "_hook" / "_wasmcache_site.py"
        old = site.stat()
        marker = f"UPGRADED-{int(first)}"
        new = site.with_name("new.py")
        new.write_text(site.read_text() + f"\nimport os as _o\n_o.write(2, b'{marker}\\n')\n")
        os.utime(new, ns=(old.st_atime_ns, old.st_mtime_ns))  # the old time, a new file
        new.replace(site)
        argv = [str(bindir / "wasmcache"), "exec", *probe] if first else [str(cli), "exec", *probe]
        assert marker.encode() in run(argv, env, tmp_path).stderr
        assert run(argv, env, tmp_path).stderr.count(marker.encode()) == 1
