"""bin/wasmcache-exec, the shell launcher that serves `wasmcache exec` without starting Python (opt-in).

Differential: the same command through the launcher (its first run falls back to `wasmcache exec`, which
leaves the plan; the second is served by the shell alone) and through the Python CLI, on the same cases;
CMD (`env -0`, or a small probe) must see the same environment, the same arguments, the same signal
dispositions, and errors must read the same. The documented differences (a POSIX shell's: names it cannot
hold, IFS, OPTIND, PPID, PWD) are asserted as such, so a change in them is seen.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import wasmcache
from wasmcache._dropin_exec import HOOK_DIR, HOOK_ZIP, LAUNCHER_PLAN, hook_entry

SRC = Path(wasmcache.__file__).resolve().parents[1]  # this checkout's, or the copy `make mutants` made
LAUNCHER = SRC / "wasmcache-launcher.sh"
# The Python CLI from SRC, whatever the environment of a case says (PYTHONPATH is one of the cases).
PYTHON_CLI = [sys.executable, "-c",
              f"import sys; sys.path.insert(0, {str(SRC)!r}); from wasmcache.cli import main; main()"]
ENV = shutil.which("env") or "/usr/bin/env"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the launcher's fast path needs /proc")


@pytest.fixture
def bindir(tmp_path: Path) -> Path:
    """A bin directory as pip makes one: the console script `wasmcache`, the launcher `wasmcache-exec`."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shutil.copy(LAUNCHER, bindir / "wasmcache-exec")
    cli = bindir / "wasmcache"
    cli.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(SRC)!r})\n"
                   "from wasmcache.cli import main\nsys.exit(main())\n")
    for script in (bindir / "wasmcache-exec", cli):
        script.chmod(0o755)
    return bindir


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's environment: no XDG_* or WASMCACHE_* unless given, this checkout importable."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def run(argv: list[str], env: dict[str, str], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=60, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


def seen(proc: subprocess.CompletedProcess[bytes]) -> dict[str, str]:
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    pairs = [item.split(b"=", 1) for item in proc.stdout.split(b"\0") if item]
    env = {os.fsdecode(k): os.fsdecode(v) for k, v in pairs}
    env.pop("PWD", None)  # the documented difference (see the module's text)
    return env


def both(bindir: Path, words: list[str], env: dict[str, str], cwd: Path) -> tuple[dict[str, str], ...]:
    """What CMD sees: launcher (fallback run), launcher (shell alone), Python CLI."""
    launcher = [str(bindir / "wasmcache-exec"), *words]
    first = seen(run(launcher, env, cwd))
    assert (bindir / LAUNCHER_PLAN).is_file(), "the fallback run left no plan for the launcher"
    fast = seen(run(launcher, env, cwd))
    python = seen(run([*PYTHON_CLI, "exec", *words], env, cwd))
    return first, fast, python


CASES = {
    "plain": ([], {}),
    "xdg": ([], {"XDG_CACHE_HOME": "/srv/cache dir"}),
    "xdg-trailing-slash": ([], {"XDG_CACHE_HOME": "/srv/cache/"}),
    "xdg-relative-ignored": ([], {"XDG_CACHE_HOME": "relative/cache"}),
    "wasmcache-dir-relative": ([], {"WASMCACHE_DIR": "some root"}),
    "wasmcache-dir-empty": ([], {"WASMCACHE_DIR": ""}),
    "cache-dir-tilde": (["--cache-dir=~/roots/[a]"], {}),
    "cache-dir-dotdot": (["--cache-dir", "a/../b"], {}),
    "cache-dir-twice": (["--cache-dir", "first", "--cache-dir", "second"], {}),
    "verbose-debug": (["-v", "--debug"], {}),
    "verbose": (["-v"], {}),
    "pythonpath-empty": ([], {"PYTHONPATH": ""}),
    "pythonpath-kept": ([], {"PYTHONPATH": "/a b::/c"}),
    "pythonpath-has-hook-dir": ([], {"PYTHONPATH": f"/x:{HOOK_DIR}"}),
    "double-dash": (["--"], {}),
    "no-home": ([], {"HOME": ""}),
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
    work = tmp_path / "work"
    work.mkdir()
    first, fast, python = both(bindir, [*words, ENV, "-0"], env, work)
    assert first == python
    assert fast == python
    assert python["WASMCACHE_AUTO"] == "1"
    assert {HOOK_ZIP, HOOK_DIR} & set(python["PYTHONPATH"].split(os.pathsep))


def test_a_relative_root_is_made_absolute_from_the_physical_directory(bindir: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    env = clean_env(tmp_path, PWD=str(link))
    _first, fast, python = both(bindir, ["--cache-dir", "r", ENV, "-0"], env, link)
    assert fast["WASMCACHE_DIR"] == python["WASMCACHE_DIR"] == os.path.join(os.path.realpath(link), "r")


def launcher(bindir: Path, *words: str) -> list[str]:
    return [str(bindir / "wasmcache-exec"), *words]


def test_the_launcher_is_served_without_python_once_the_plan_exists_and_falls_back_when_it_must(
        bindir: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    assert run(launcher(bindir, "true"), env, tmp_path).returncode == 0  # the fallback leaves the plan
    cli = bindir / "wasmcache"
    real_cli = cli.read_text()
    cli.write_text('#!/bin/sh\necho fell back: "$@" >&2\nexit 99\n')
    served = run(launcher(bindir, ENV, "-0"), env, tmp_path)
    assert served.returncode == 0
    assert served.stderr == b""
    for words in ([], ["--help"], ["--unknown", "true"], ["no-such-command-here"], ["--cache-dir=", "true"],
                  ["--cache-dir", "", "true"], ["--cache-dir", "~nobody/x", "true"], ["--cache-dir"]):
        proc = run(launcher(bindir, *words), env, tmp_path)
        assert proc.returncode == 99, words
        assert proc.stderr == ("fell back: " + " ".join(["exec", *words]) + "\n").encode(), words
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
    cli.write_text(real_cli)
    assert run(launcher(bindir, "true"), env, tmp_path).returncode == 0
    assert (bindir / LAUNCHER_PLAN).read_text().splitlines()[0] == hook_entry()


def test_a_launcher_reached_through_a_symlink_reads_the_plan_beside_its_file(bindir: Path, tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    (links / "wasmcache-exec").symlink_to(bindir / "wasmcache-exec")
    env = clean_env(tmp_path)
    first = seen(run([str(links / "wasmcache-exec"), ENV, "-0"], env, tmp_path))
    assert (bindir / LAUNCHER_PLAN).is_file()
    assert not (links / LAUNCHER_PLAN).exists()
    assert seen(run([str(links / "wasmcache-exec"), ENV, "-0"], env, tmp_path)) == first


def test_errors_read_the_same_through_the_launcher_and_the_python_cli(bindir: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    run(launcher(bindir, "true"), env, tmp_path)  # the plan exists: the shell serves
    not_executable = tmp_path / "data file"
    not_executable.write_text("#!/bin/sh\necho no\n")
    for words in (["no-such-command-here"], [str(not_executable)], [str(tmp_path)], [], ["--bogus", "true"], [""]):
        ours = run(launcher(bindir, *words), env, tmp_path)
        python = run([*PYTHON_CLI, "exec", *words], env, tmp_path)
        assert (ours.returncode, ours.stdout, ours.stderr) == (python.returncode, python.stdout, python.stderr), words
        assert ours.returncode != 0


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


def _ignored_signals(proc: subprocess.CompletedProcess[bytes]) -> int:
    line = next(x for x in proc.stdout.decode().splitlines() if x.startswith("SigIgn:"))
    return int(line.split()[1], 16)


def test_cmd_gets_sigpipe_and_sigxfsz_back_even_when_the_caller_ignores_them(bindir: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    run(launcher(bindir, "true"), env, tmp_path)
    probe = ["cat", "/proc/self/status"]

    def ignoring() -> None:
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    bits = (1 << (signal.SIGPIPE - 1)) | (1 << (signal.SIGXFSZ - 1))
    for argv in (launcher(bindir, *probe), [*PYTHON_CLI, "exec", *probe]):
        plain = run(argv, env, tmp_path)
        ignored = run(argv, env, tmp_path, preexec_fn=ignoring, restore_signals=False)
        assert _ignored_signals(plain) & bits == 0
        assert _ignored_signals(ignored) & bits == 0, argv
    # The control: without exec's reset, CMD inherits the caller's ignored SIGPIPE.
    bare = run(["cat", "/proc/self/status"], env, tmp_path, preexec_fn=ignoring, restore_signals=False)
    assert _ignored_signals(bare) & bits == bits


def test_what_a_shell_cannot_pass_on_is_what_the_readme_says(bindir: Path, tmp_path: Path) -> None:
    """The launcher's documented differences, asserted, with `wasmcache exec` passing everything on."""
    env = clean_env(tmp_path, **{"foo.bar": "1", "BASH_FUNC_f%%": "() {  echo hi\n}", "IFS": ":"})
    run(launcher(bindir, "true"), env, tmp_path)
    ours = seen(run(launcher(bindir, ENV, "-0"), env, tmp_path))
    python = seen(run([*PYTHON_CLI, "exec", ENV, "-0"], env, tmp_path))
    for name in ("foo.bar", "BASH_FUNC_f%%", "IFS"):
        assert python[name] == env[name]
    assert "foo.bar" not in ours
    assert "BASH_FUNC_f%%" not in ours
    assert ours.get("IFS") != ":"
    same = {k: v for k, v in python.items() if k not in ("foo.bar", "BASH_FUNC_f%%", "IFS")}
    assert {k: v for k, v in ours.items() if k != "IFS"} == same


def test_the_installed_commands_are_the_python_cli_and_the_launcher_beside_it() -> None:
    installed = Path(sys.executable).with_name("wasmcache-exec")
    if not installed.exists():
        pytest.skip("no console scripts beside this Python (not installed with pip)")
    assert installed.read_bytes() == LAUNCHER.read_bytes(), "bin/wasmcache-exec is stale: reinstall (make venv)"
    cli = Path(sys.executable).with_name("wasmcache")
    assert cli.read_text().startswith("#!")
    help_text = subprocess.run([str(cli), "--help"], capture_output=True, text=True, check=True).stdout
    assert "Usage: wasmcache" in help_text


# --- `wasmcache exec` itself, from an outside reader's findings ----------------------------------------------


def test_exec_passes_the_callers_environment_not_pythons_locale_coercion(tmp_path: Path) -> None:
    """Under a C locale Python sets LC_CTYPE=C.UTF-8 for itself (PEP 538); CMD must not inherit it."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C"}
    wrapped = seen(run([*PYTHON_CLI, "exec", ENV, "-0"], env, tmp_path))
    assert "LC_CTYPE" not in wrapped
    assert "LC_ALL" not in wrapped
    assert wrapped["LANG"] == "C"


def test_a_relative_home_still_pins_an_absolute_root(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": "relhome"}
    wrapped = seen(run([*PYTHON_CLI, "exec", ENV, "-0"], env, tmp_path))
    assert wrapped["WASMCACHE_DIR"] == str(tmp_path / "relhome" / ".cache" / "wasmcache")


def test_an_empty_cache_dir_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    for words in (["--cache-dir=", "exec", "true"], ["exec", "--cache-dir=", "true"], ["--cache-dir=", "stats"]):
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
