"""`wasmcache exec CMD` and $WASMCACHE_AUTO: the drop-in in programs and their children, unmodified."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli
from wasmcache._dropin_exec import HOOK_DIR
from wasmcache._dropin_status import dropin_status

TESTS = str(Path(__file__).parent)

# A program that knows nothing of wasmcache: it compiles its module on every start.
PROGRAM = """
import json, os, sys, wasmtime
from wasmgen import answer_module, call_answer
engine = wasmtime.Engine()
module = wasmtime.Module(engine, answer_module(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
dropin = sys.modules.get("wasmcache._dropin")
handle = dropin.installed() if dropin else None
print(json.dumps({"answer": call_answer(engine, module), "active": bool(handle and handle.active),
                  "root": str(handle.root) if handle else None,
                  "stats": list(handle.stats()[:3]) if handle else None}))
"""


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WASMCACHE_AUTO", "WASMCACHE_DIR")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def last_json(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def exec_(*args: str, env: dict[str, str] | None = None, input_text: str | None = None,
          ) -> subprocess.CompletedProcess[str]:
    return run_cli("exec", *args, env=env or env_with(), input_text=input_text)


def test_exec_passes_exit_code_argv_and_stdin_through(root: Path) -> None:
    code = "import sys, json; print(json.dumps(sys.argv[1:])); print(sys.stdin.read().upper()); sys.exit(5)"
    proc = exec_("--cache-dir", str(root), sys.executable, "-c", code, "a", "b c", "--flag", "--", "-x",
                 input_text="hello\n")
    assert proc.returncode == 5, proc.stderr
    lines = proc.stdout.splitlines()
    assert json.loads(lines[0]) == ["a", "b c", "--flag", "--", "-x"]
    assert lines[1] == "HELLO"
    assert proc.stderr == ""


def test_exec_activates_in_the_program_and_hits_on_its_second_start(root: Path) -> None:
    first = last_json(exec_("--cache-dir", str(root), sys.executable, "-c", PROGRAM))
    second = last_json(exec_("--cache-dir", str(root), sys.executable, "-c", PROGRAM))
    assert (first["answer"], first["active"], first["root"]) == (5, True, str(root))
    assert first["stats"] == [0, 1, 1]
    assert second["stats"] == [1, 0, 0]
    bare = subprocess.run([sys.executable, "-c", PROGRAM], env=env_with(), capture_output=True, text=True,
                          check=False)
    assert last_json(bare)["active"] is False  # control: nothing without the wrapper


def test_exec_reaches_child_and_grandchild_python_processes(root: Path, tmp_path: Path) -> None:
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    parent = f"""
    import subprocess, sys
    child = "import subprocess, sys; subprocess.run([sys.executable, {str(program)!r}, '6'], check=True)"
    subprocess.run([sys.executable, "-c", child], check=True)
    """
    first = last_json(exec_("--cache-dir", str(root), sys.executable, "-c", textwrap.dedent(parent)))
    second = last_json(exec_("--cache-dir", str(root), "sh", "-c", f'"{sys.executable}" "{program}" 6'))
    assert (first["answer"], first["active"], first["stats"]) == (6, True, [0, 1, 1])
    assert (second["active"], second["stats"]) == (True, [1, 0, 0])


def test_exec_chains_the_sitecustomize_it_shadows(root: Path, tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("import os\nos.environ['THEIR_SITECUSTOMIZE'] = 'ran'\n")
    env = env_with(PYTHONPATH=os.pathsep.join([TESTS, str(theirs), os.environ.get("PYTHONPATH", "")]))
    code = PROGRAM + "\nprint(os.environ.get('THEIR_SITECUSTOMIZE'))\n"
    proc = exec_("--cache-dir", str(root), sys.executable, "-c", code, env=env)
    assert proc.stdout.splitlines()[-1] == "ran"
    assert json.loads(proc.stdout.splitlines()[-2])["active"] is True


def test_exec_leaves_the_programs_sys_path_as_an_unwrapped_run_has_it(root: Path, tmp_path: Path) -> None:
    # The hook's zip is on PYTHONPATH to be imported at start; after that the program (and the
    # sitecustomize it shadows) sees the sys.path of an unwrapped run, and its children still get the hook.
    theirs = tmp_path / "their dir [1]"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("import os, sys\nos.environ['THEIR_PATH'] = os.pathsep.join(sys.path)\n")
    env = env_with(PYTHONPATH=os.pathsep.join([TESTS, str(theirs)]))
    code = ("import json, os, sys, subprocess; print(json.dumps([sys.path, os.environ['THEIR_PATH']])); "
            "sys.stdout.flush(); subprocess.run([sys.executable, '-c', " + repr(PROGRAM) + "], check=True)")
    wrapped = exec_("--cache-dir", str(root), sys.executable, "-c", code, env=env)
    bare = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert wrapped.returncode == 0, wrapped.stderr
    assert json.loads(wrapped.stdout.splitlines()[0]) == json.loads(bare.stdout.splitlines()[0])
    assert json.loads(wrapped.stdout.splitlines()[-1])["active"] is True  # the child still runs the hook
    assert wrapped.stderr == bare.stderr == ""


def test_exec_missing_or_not_executable_command_fails_like_a_shell(tmp_path: Path) -> None:
    missing = exec_("no-such-command-wasmcache")
    assert missing.returncode == 127
    assert missing.stderr.strip() == "wasmcache: exec: no-such-command-wasmcache: command not found"
    script = tmp_path / "not executable"
    script.write_text("#!/bin/sh\n")
    denied = exec_(str(script))
    assert denied.returncode == 126
    assert "permission denied" in denied.stderr
    assert "Traceback" not in denied.stderr + missing.stderr
    assert exec_().returncode == 2  # no command: click's usage error


def test_exec_leaves_signals_at_their_defaults() -> None:
    # Python ignores SIGPIPE; an ignored signal would survive exec, so CMD must get the default.
    proc = exec_("cat", "/proc/self/status")
    ignored = int(next(line for line in proc.stdout.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))


def test_exec_fresh_machine_new_home_no_xdg_or_wasmcache_variables(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "WASMCACHE_"))}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "wasmcache.cli", "exec", sys.executable, "-c", PROGRAM]
    first, second = (last_json(subprocess.run(command, env=env, capture_output=True, text=True, check=False))
                     for _ in range(2))
    assert first["root"] == str(home / ".cache" / "wasmcache")
    assert (first["stats"], second["stats"]) == ([0, 1, 1], [1, 0, 0])


# --- $WASMCACHE_AUTO through the startup hook (the exec directory, as the .pth would arm it) ---


LAZY = """
import json, sys
before = [m for m in ("wasmcache", "_wasmcache_hook", "wasmtime") if m in sys.modules]
armed = any(type(f).__name__ == "_PostImportFinder" for f in sys.meta_path)
""" + PROGRAM.replace("print(json.dumps({", "print(json.dumps({'before': before, 'armed': armed, ")


@pytest.mark.parametrize("auto", ["1", "", "0", "yes"])
def test_auto_on_and_off(root: Path, auto: str) -> None:
    env = env_with(WASMCACHE_AUTO=auto, WASMCACHE_DIR=str(root))
    env["PYTHONPATH"] = os.pathsep.join([HOOK_DIR, env["PYTHONPATH"]])
    result = last_json(subprocess.run([sys.executable, "-c", LAZY], env=env, capture_output=True, text=True,
                                      check=False))
    on = auto in ("1", "yes")
    assert result["active"] is on
    # Armed, the hook is in the process but wasmcache is not, until wasmtime is imported. Set to
    # anything, the variable loads the hook (its words are read there, one home), which arms nothing.
    assert result["before"] == ["_wasmcache_hook"]
    assert result["armed"] is on


def test_auto_with_disable_stays_off(root: Path) -> None:
    env = env_with(WASMCACHE_AUTO="1", WASMCACHE_DISABLE="1", WASMCACHE_DIR=str(root))
    env["PYTHONPATH"] = os.pathsep.join([HOOK_DIR, env["PYTHONPATH"]])
    result = last_json(subprocess.run([sys.executable, "-c", LAZY], env=env, capture_output=True, text=True,
                                      check=False))
    assert result["active"] is False
    assert not root.exists()


def test_an_explicit_install_takes_over_from_auto(root: Path, tmp_path: Path) -> None:
    env = env_with(WASMCACHE_AUTO="1", WASMCACHE_DIR=str(root))
    env["PYTHONPATH"] = os.pathsep.join([HOOK_DIR, env["PYTHONPATH"]])
    code = f"""
    import json, wasmtime, wasmcache
    handle = wasmcache.install({str(tmp_path / "mine")!r})
    print(json.dumps({{"root": str(handle.root), "automatic": handle.automatic}}))
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          check=False)
    assert last_json(proc) == {"root": str(tmp_path / "mine"), "automatic": False}


def test_status_says_whether_this_python_would_activate() -> None:
    status = dropin_status({"WASMCACHE_AUTO": "1", "PYTHONPATH": HOOK_DIR})
    assert status["would_activate"] is True
    assert status["exec_hook"] is True
    off = dropin_status({})
    assert off["would_activate"] is False
    assert "WASMCACHE_AUTO is not on" in off["reason"]
    disabled = dropin_status({"WASMCACHE_AUTO": "1", "WASMCACHE_DISABLE": "1", "PYTHONPATH": HOOK_DIR})
    assert disabled["would_activate"] is False


def test_exec_runs_a_console_script_and_takes_cache_dir_before_or_after_exec(root: Path, tmp_path: Path) -> None:
    # A console script is a file with a shebang naming its venv's python: exec finds it on PATH.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "some-tool"
    tool.write_text(f"#!{sys.executable}\n{PROGRAM}")
    tool.chmod(0o755)
    env = env_with(PATH=os.pathsep.join([str(bindir), os.environ.get("PATH", "")]))
    before = last_json(run_cli("--cache-dir", str(root), "exec", "some-tool", "7", env=env))
    after = last_json(run_cli("exec", "--cache-dir", str(root), "some-tool", "7", env=env))
    assert (before["answer"], before["root"], before["stats"]) == (7, str(root), [0, 1, 1])
    assert (after["root"], after["stats"]) == (str(root), [1, 0, 0])


def test_exec_with_stdout_or_stderr_closed() -> None:
    cli = f'"{sys.executable}" -m wasmcache.cli exec'
    closed_out = subprocess.run(["sh", "-c", f'{cli} sh -c "exit 3" >&-'], env=env_with(), capture_output=True,
                                text=True, check=False)
    assert closed_out.returncode == 3, closed_out.stderr
    closed_err = subprocess.run(["sh", "-c", f"{cli} no-such-command-wasmcache 2>&-"], env=env_with(),
                                capture_output=True, text=True, check=False)
    assert closed_err.returncode == 127


@pytest.mark.parametrize("spelling", [["exec", "--cache-dir", "{root}"], ["--cache-dir", "{root}", "exec"],
                                      ["exec", "--cache-dir={root}", "--"]])
def test_exec_becomes_the_command_without_importing_the_cli(tmp_path: Path, spelling: list[str]) -> None:
    # Every spelling of `exec` with a command is taken before click is imported (~30 ms of start-up).
    words = [w.format(root=tmp_path / "root") for w in spelling]
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "wasmcache.cli", *words, "true"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "click" not in imported
    assert not any(name.startswith("wasmcache._cache") for name in imported)


def test_install_under_exec_takes_over_without_a_false_warning(tmp_path: Path) -> None:
    code = f"import wasmcache; print(wasmcache.install(root={str(tmp_path / 'mine')!r}).active)"
    proc = subprocess.run([sys.executable, "-m", "wasmcache.cli", "exec", "--cache-dir", str(tmp_path / "auto"),
                           sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, "True"), proc.stderr
    assert "not active" not in proc.stderr


def test_doctor_says_when_the_drop_in_cannot_use_its_root(tmp_path: Path) -> None:
    (tmp_path / "ww").mkdir()
    (tmp_path / "ww").chmod(0o777)
    for extra in ({"WASMCACHE_DIR": str(tmp_path / "ww")}, {"WASMCACHE_MAX_SIZE": "garbage"}):
        status = json.loads(run_cli("doctor", "--json", "--cache-dir", str(tmp_path / "none"),
                                    env={"WASMCACHE_AUTO": "1", **extra}).stdout)[-1]
        assert "cannot use its cache" in status["problem"], status
    assert not (tmp_path / "ww" / "wasmcache-layout").exists()  # a refused root is never written
