"""The CLI as a new user types it (issue 8, items 10-13): one verbatim line per error, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from conftest import run_cli
from wasmgen import answer_module, wasi_program

if TYPE_CHECKING:
    from pathlib import Path


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    if "doctor" in result.args and result.returncode == 1:  # a root it cannot reach: a danger, not a refusal
        return unreachable_finding(result)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "internal error" not in result.stderr
    return lines[0]


def unreachable_finding(result: subprocess.CompletedProcess[str]) -> str:
    """What doctor says of a root that cannot be reached: its first finding, a danger (exit 1), and the rest of
    its report (the drop-in's state) still printed: doctor is what a user runs to learn why."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr == "", result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("danger: "), result.stdout
    assert "cache root cannot be reached" in first
    assert "drop-in: " in result.stdout
    return first.replace(": cache root cannot be reached (", ": cannot be reached (", 1)


def test_messages_with_brackets_are_printed_verbatim(root: Path, tmp_path: Path) -> None:
    line = one_line_error(run_cli("run", "--cache-dir", str(root), "x[/y].wasm"))
    assert "x[/y].wasm" in line
    (tmp_path / "build[debug]").mkdir()
    bad = tmp_path / "build[debug]" / "app.wasm"
    bad.write_bytes(b"\0asm\x01\0\0\0\xff")
    line = one_line_error(run_cli("compile", "--cache-dir", str(root), str(bad)), code=1)
    assert "build[debug]/app.wasm" in line
    line = one_line_error(run_cli("pull", "--cache-dir", str(root), str(bad), env={"WASMCACHE_REMOTE": ""}))
    assert "s3://BUCKET[/PREFIX]" in line


@pytest.mark.parametrize("command", ["stats", "ls", "doctor", "gc", "verify", "clear"])
def test_a_cache_dir_that_is_a_file_is_one_line(tmp_path: Path, command: str) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    line = one_line_error(run_cli(command, env={"WASMCACHE_DIR": str(a_file)}))
    assert str(a_file) in line
    assert a_file.read_text() == "mine"


@pytest.mark.parametrize("command", ["stats", "ls", "doctor", "gc", "verify", "clear"])
def test_a_root_that_cannot_be_reached_is_one_line_not_an_empty_cache(tmp_path: Path, command: str) -> None:
    """A root under a file can never exist: saying "0 entries" or "does not exist yet; nothing to do" would
    hide the mistake (an outside reader's finding). A root that is merely absent still reads as empty."""
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    line = one_line_error(run_cli(command, "--cache-dir", str(a_file / "cache")))
    assert f"{a_file / 'cache'}: cannot be reached (Not a directory: {a_file} is a file)" in line  # which one
    assert a_file.read_text() == "mine"
    absent = run_cli(command, "--cache-dir", str(tmp_path / "not-yet"))
    assert absent.returncode == 0, absent.stderr
    assert not (tmp_path / "not-yet").exists()
    (tmp_path / "new-empty").mkdir()  # `mkdir -p $CACHE && wasmcache gc --cache-dir $CACHE`: a load adopts it
    empty = run_cli(command, "--cache-dir", str(tmp_path / "new-empty"))
    assert empty.returncode == 0, empty.stderr
    assert list((tmp_path / "new-empty").iterdir()) == []


@pytest.mark.parametrize("command", ["compile", "run"])
def test_a_file_name_with_a_newline_or_an_escape_stays_on_its_one_error_line(tmp_path: Path, command: str) -> None:
    """A name with a newline split the error in two; an ESC in it could recolour the terminal (an outside reader)."""
    for name, shown in (("bad\nnl.wasm", "bad\\nnl.wasm"), ("esc\x1b[31mred.wasm", "esc\\x1b[31mred.wasm")):
        (tmp_path / name).write_bytes(b"garbage")
        proc = run_cli(command, "--cache-dir", str(tmp_path / "root"), str(tmp_path / name))
        assert proc.returncode != 0
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        assert shown in lines[0]
        assert "\x1b" not in proc.stderr


def test_compile_with_a_root_path_too_long_compiles_uncached_and_exits_0(tmp_path: Path) -> None:
    wasm = tmp_path / "a.wasm"
    wasm.write_bytes(answer_module(34))
    too_long = tmp_path.joinpath(*["d" * 200] * 22)  # > PATH_MAX: every stat under it is ENAMETOOLONG
    proc = run_cli("compile", "--cache-dir", str(too_long), str(wasm))
    assert proc.returncode == 0, proc.stderr
    assert "compiled, not cached" in proc.stderr
    assert "error" not in proc.stderr


def test_inspect_of_a_key_in_a_root_that_cannot_be_reached_says_so_not_no_entry(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    line = one_line_error(run_cli("inspect", "--cache-dir", str(a_file / "cache"), "95a5"))
    assert f"cannot be reached (Not a directory: {a_file} is a file)" in line


def test_a_default_root_under_a_dangling_link_is_refused_by_name_on_a_fresh_home(tmp_path: Path) -> None:
    """~/.cache -> an unmounted disk: the root can never be created; a new user's shell, no XDG_* nor WASMCACHE_*."""
    import wasmcache

    home = tmp_path / "home"
    home.mkdir()
    (home / ".cache").symlink_to("/nonexistent-mount/cache")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "WASMCACHE_"))} | {"HOME": str(home)}
    why = f"{home / '.cache'} is a symbolic link to /nonexistent-mount/cache, which does not exist"
    for command in ("stats", "ls", "doctor", "gc", "verify"):
        proc = subprocess.run([sys.executable, "-m", "wasmcache.cli", command], env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert why in one_line_error(proc)
    with pytest.raises(wasmcache.NotACacheError, match="cannot be reached"):
        wasmcache.ModuleCache(home / ".cache" / "wasmcache").entries()


def test_a_root_under_a_file_is_refused_as_a_root_that_is_a_file(tmp_path: Path) -> None:
    # Found by an outside reader: ModuleCache("hello.wasm/x"), install() and `run`/`compile --cache-dir hello.wasm/x`
    # warned and cached nothing (a mistyped root silently turning the cache off), where a root that is a file raises
    # NotACacheError and the other commands exit 2.
    import wasmcache

    (tmp_path / "a.wat").write_text('(module (func (export "_start")))')
    root = tmp_path / "a.wat" / "x"
    for make in (wasmcache.ModuleCache, wasmcache.install):
        with pytest.raises(wasmcache.NotACacheError, match=r"\(Not a directory: .*a.wat is a file\)"):
            make(root)
    for command in (["run", "a.wat"], ["compile", "a.wat"], ["stats"]):
        proc = subprocess.run([sys.executable, "-m", "wasmcache.cli", "--cache-dir", str(root), *command],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 2, (command, proc.stderr)
        assert f"{root}: cannot be reached (Not a directory" in one_line_error(proc)


def test_a_root_that_is_a_link_to_nothing_is_named_so(tmp_path: Path) -> None:
    # Found by an outside reader: --cache-dir naming a link to a missing directory read "exists and is not a
    # directory" (compile, run) or "not a directory, so not a wasmcache cache root" (ls, stats ...).
    (tmp_path / "a.wat").write_text('(module (func (export "_start")))')
    link = tmp_path / "root link"
    link.symlink_to(tmp_path / "gone" / "cache")
    why = f"it is a symbolic link to {tmp_path / 'gone' / 'cache'}, which does not exist"
    for command in (["compile", "a.wat"], ["run", "a.wat"], ["stats"], ["ls"], ["doctor"], ["gc"], ["verify"]):
        proc = subprocess.run([sys.executable, "-m", "wasmcache.cli", "--cache-dir", str(link), *command],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
        assert f"{link}: " in one_line_error(proc, 1 if command == ["doctor"] else 2)
        assert why in proc.stderr + proc.stdout, (command, proc.stderr)
    assert not (tmp_path / "gone").exists()
    # A loop, and a link to a link to nothing (found by the next reader: both read "a link to X, which does not
    # exist", X a link that does exist, or the loop itself).
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "chain").symlink_to(link)
    chained = f"it is a symbolic link to {link} (and on to {tmp_path / 'gone' / 'cache'}), which does not exist"
    for root, said in ((tmp_path / "loop", "it is a symbolic link that leads back to itself"),
                       (tmp_path / "chain", chained)):
        proc = subprocess.run([sys.executable, "-m", "wasmcache.cli", "--cache-dir", str(root), "stats"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
        assert said in one_line_error(proc), proc.stderr


@pytest.mark.parametrize("command", [("stats",), ("ls",), ("doctor",), ("--help",)])
def test_output_to_a_full_device_is_one_line_not_an_internal_error(root: Path, command: tuple[str, ...]) -> None:
    with open("/dev/full", "w") as full:
        where = [] if command == ("--help",) else ["--cache-dir", str(root)]
        proc = subprocess.run([sys.executable, "-m", "wasmcache.cli", *command, *where], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == "wasmcache: error: cannot write the output: No space left on device\n"


@pytest.mark.parametrize("command", ["doctor", "verify", "gc", "ls", "stats"])
def test_a_directory_that_is_not_a_cache_is_one_line_and_no_advice_to_delete(tmp_path: Path, command: str) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    line = one_line_error(run_cli(command, "--cache-dir", str(mine)))
    assert "not a wasmcache cache root" in line
    assert "remove" not in line
    assert (mine / "notes.txt").read_text() == "keep"


HOLD_GC = """
import fcntl, os, signal, sys
fd = os.open(os.path.join(sys.argv[1], "gc.lock"), os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("holding", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)  # a `wasmcache gc` stopped with Ctrl-Z in another terminal
"""


def test_gc_and_clear_behind_a_stopped_collector_say_so_in_one_line(root: Path, tmp_path: Path) -> None:
    # They waited for ever, in silence, behind a collection stopped with Ctrl-Z.
    wasm = tmp_path / "m.wasm"
    wasm.write_bytes(answer_module(31))
    assert run_cli("--cache-dir", str(root), "compile", str(wasm)).returncode == 0
    holder = subprocess.Popen([sys.executable, "-c", HOLD_GC, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "holding\n"
        for command in ("gc", "clear"):
            proc = run_cli("--cache-dir", str(root), command, timeout=30)
            assert proc.returncode != 0, command
            assert proc.stderr.count("\n") == 1, proc.stderr
            assert f"process {holder.pid} holds its gc lock and is stopped" in proc.stderr, proc.stderr
            assert "Traceback" not in proc.stderr
    finally:
        holder.kill()
        holder.wait()
    assert run_cli("--cache-dir", str(root), "gc").returncode == 0  # once it is gone, as before


def test_gc_and_clear_on_a_read_only_root_are_one_line(root: Path) -> None:
    import wasmcache

    wasmcache.ModuleCache(root).load(answer_module(31))
    subprocess.run(["chattr", "-R", "+i", str(root)], check=True)
    try:
        for command in ("gc", "clear"):
            line = one_line_error(run_cli(command, "--cache-dir", str(root)))
            assert str(root) in line
    finally:
        subprocess.run(["chattr", "-R", "-i", str(root)], check=True)


def test_gc_under_disable_on_a_missing_root_is_fine(tmp_path: Path) -> None:
    import wasmcache

    os.environ["WASMCACHE_DISABLE"] = "1"
    try:
        report = wasmcache.ModuleCache(tmp_path / "missing").gc()
    finally:
        del os.environ["WASMCACHE_DISABLE"]
    assert report.entries == 0
    assert not (tmp_path / "missing").exists()
    result = run_cli("gc", "--cache-dir", str(tmp_path / "missing"), env={"WASMCACHE_DISABLE": "1"})
    assert result.returncode == 0, result.stderr


def test_odd_inputs_name_the_file_and_what_is_wrong(root: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.wasm"
    empty.write_bytes(b"")
    assert "empty" in one_line_error(run_cli("run", "--cache-dir", str(root), str(empty)))
    line = one_line_error(run_cli("run", "--cache-dir", str(root), "/dev/null"))
    assert "/dev/null: is empty" in line  # what it is, not "no such file"
    assert "a directory" in one_line_error(run_cli("run", "--cache-dir", str(root), str(tmp_path)))
    text = tmp_path / "hello.wat"
    text.write_text("hello world")
    line = one_line_error(run_cli("compile", "--cache-dir", str(root), str(text)), code=1)
    assert "not valid WAT text: expected `(` (line 1, column 1)" in line  # wat's error on one line, as `run` says it


def test_a_non_utf8_file_name_runs(root: Path, tmp_path: Path) -> None:
    name = os.fsencode(str(tmp_path)) + b"/caf\xe9 [1].wasm"
    with open(name, "wb") as f:
        f.write(wasi_program())
    def run(*extra: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([os.fsencode(sys.executable), b"-m", b"wasmcache.cli", b"run", b"--cache-dir",
                               os.fsencode(str(root)), *extra, b"--invoke", b"add", name, b"1", b"2"],
                              capture_output=True, check=False, timeout=120)

    # WASI argv is UTF-8, so the file's name cannot be argv[0]: one line naming the file and the way out ...
    refused = run()
    assert refused.returncode in (1, 2)
    assert refused.stderr.count(b"\n") == 1
    assert b"caf\xe9 [1].wasm" in refused.stderr
    assert b"--argv0" in refused.stderr
    # ... which works (the cache itself takes any file name).
    result = run(b"--argv0", b"add")
    assert result.stdout.strip() == b"3", result.stderr


def test_compile_goes_on_past_a_bad_file(root: Path, tmp_path: Path) -> None:
    files = []
    inputs = (("a.wasm", answer_module(32)), ("bad.wasm", b"\0asm\x01\0\0\0\xff"), ("c.wasm", answer_module(33)))
    for name, data in inputs:
        (tmp_path / name).write_bytes(data)
        files.append(str(tmp_path / name))
    result = run_cli("compile", "--cache-dir", str(root), *files)
    assert result.returncode == 1
    assert "bad.wasm" in result.stderr
    assert "a.wasm: compiled" in result.stderr
    assert "c.wasm: compiled" in result.stderr
    assert len(list(root.rglob("*.cwasm"))) == 2


def test_compile_under_disable_says_nothing_was_cached(root: Path, tmp_path: Path) -> None:
    (tmp_path / "a.wasm").write_bytes(answer_module(34))
    result = run_cli("compile", "--json", "--cache-dir", str(root), str(tmp_path / "a.wasm"),
                     env={"WASMCACHE_DISABLE": "1"})
    out = json.loads(result.stdout)
    assert (out["cached"], out["entry"]) == (False, None)
    assert not root.exists()


def test_cache_dir_before_the_subcommand_and_the_subcommands_wins(root: Path, tmp_path: Path) -> None:
    (tmp_path / "a.wasm").write_bytes(answer_module(35))
    assert run_cli("--cache-dir", str(root), "compile", str(tmp_path / "a.wasm")).returncode == 0
    before = json.loads(run_cli("--cache-dir", str(root), "stats", "--json").stdout)
    assert (before["root"], before["entries"]) == (str(root), 1)
    other = tmp_path / "other"
    both = json.loads(run_cli("--cache-dir", str(root), "stats", "--json", "--cache-dir", str(other)).stdout)
    assert both["root"] == str(other)


def test_gc_max_size_does_not_read_a_bad_environment_value(root: Path, tmp_path: Path) -> None:
    (tmp_path / "a.wasm").write_bytes(answer_module(36))
    run_cli("compile", "--cache-dir", str(root), str(tmp_path / "a.wasm"))
    result = run_cli("gc", "--cache-dir", str(root), "--max-size", "1G", env={"WASMCACHE_MAX_SIZE": "lots"})
    assert result.returncode == 0, result.stderr


def test_verbose_logs_hits_too(root: Path, tmp_path: Path) -> None:
    (tmp_path / "a.wasm").write_bytes(answer_module(37))
    first = run_cli("-v", "compile", "--cache-dir", str(root), str(tmp_path / "a.wasm"))
    assert "compiled" in first.stderr
    second = run_cli("-v", "compile", "--cache-dir", str(root), str(tmp_path / "a.wasm"))
    assert "hit" in second.stderr


def test_a_missing_trusted_key_is_refused_before_any_work(root: Path, tmp_path: Path) -> None:
    (tmp_path / "a.wasm").write_bytes(answer_module(38))
    line = one_line_error(run_cli("compile", "--cache-dir", str(root), "--remote", "s3://bucket/p", "--trusted-key",
                                  str(tmp_path / "nope.pub"), str(tmp_path / "a.wasm")))
    assert "nope.pub: no such file" in line
    assert not list(root.rglob("*.cwasm"))


# --- found by an outside reader who knew only the README and --help ---------------------------------


def test_a_fifo_as_input_is_refused_not_waited_on(root: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "ff"
    os.mkfifo(fifo)
    for command in (("compile",), ("inspect",)):
        line = one_line_error(run_cli(*command, "--cache-dir", str(root), str(fifo), timeout=30),
                              code=1 if command == ("compile",) else 2)
        assert "not a regular file" in line


def test_inspect_follows_a_users_symlink_and_says_what_a_small_file_is(root: Path, tmp_path: Path) -> None:
    import wasmtime

    own = tmp_path / "own.cwasm"
    own.write_bytes(wasmtime.Module(wasmtime.Engine(), answer_module(51)).serialize())
    (tmp_path / "link.cwasm").symlink_to(own)
    linked = run_cli("inspect", "--cache-dir", str(root), str(tmp_path / "link.cwasm"))
    assert linked.returncode == 0, linked.stderr
    small = tmp_path / "small.wasm"
    small.write_bytes(answer_module(52, functions=1, body=0)[:40])
    assert "not an ELF file" in one_line_error(run_cli("inspect", "--cache-dir", str(root), str(small)))


def test_inspect_takes_upper_case_keys_and_says_what_a_key_is(root: Path, tmp_path: Path) -> None:
    (tmp_path / "a.wasm").write_bytes(answer_module(53))
    key = json.loads(run_cli("compile", "--json", "--cache-dir", str(root), str(tmp_path / "a.wasm")).stdout)["key"]
    assert run_cli("inspect", "--cache-dir", str(root), key[:8].upper()).returncode == 0
    assert "4 to 64 hex digits" in one_line_error(run_cli("inspect", "--cache-dir", str(root), "xyz"))


def test_a_marker_that_is_not_ours_is_refused_and_kept(tmp_path: Path) -> None:
    for i, content in enumerate(("garbage\n", "", None)):
        mine = tmp_path / f"m{i}"
        mine.mkdir()
        marker = mine / "wasmcache-layout"
        if content is None:
            marker.mkdir()
        else:
            marker.write_text(content)
        (tmp_path / "a.wasm").write_bytes(answer_module(54))
        line = one_line_error(run_cli("compile", "--cache-dir", str(mine), str(tmp_path / "a.wasm")))
        assert "was not written by wasmcache" in line
        assert marker.is_dir() if content is None else marker.read_text() == content


def test_gc_lock_in_the_way_is_not_called_read_only(root: Path, tmp_path: Path) -> None:
    (tmp_path / "a.wasm").write_bytes(answer_module(55))
    run_cli("compile", "--cache-dir", str(root), str(tmp_path / "a.wasm"))
    (root / "gc.lock").unlink()
    (root / "gc.lock").mkdir()
    line = one_line_error(run_cli("gc", "--cache-dir", str(root)))
    assert "read-only" not in line
    assert "gc.lock" in line


def test_a_size_limit_below_the_entry_is_named_as_the_reason(tmp_path: Path) -> None:
    (tmp_path / "a.wasm").write_bytes(answer_module(56))
    result = run_cli("compile", "--cache-dir", str(tmp_path / "c"), str(tmp_path / "a.wasm"),
                     env={"WASMCACHE_MAX_SIZE": "1K"})
    assert result.returncode == 0
    assert "evicted at once: the size limit is" in result.stderr
    assert "not writable" not in result.stderr


def test_stdout_closed_is_one_line_not_silence(root: Path, tmp_path: Path) -> None:
    (tmp_path / "a.wasm").write_bytes(answer_module(57))
    run_cli("compile", "--cache-dir", str(root), str(tmp_path / "a.wasm"))
    result = subprocess.run(f"'{sys.executable}' -m wasmcache.cli ls --cache-dir '{root}' >&-", shell=True,
                            capture_output=True, text=True, timeout=60, check=False)
    expected = "wasmcache: error: standard output is closed: nothing can be printed (run without >&-)"
    assert one_line_error(result) == expected


def test_non_utf8_paths_are_printed_as_their_bytes(tmp_path: Path) -> None:
    root = os.fsencode(str(tmp_path)) + b"/bad\xff\xfename"
    result = subprocess.run([sys.executable, "-m", "wasmcache.cli", "stats", "--cache-dir", os.fsdecode(root)],
                            capture_output=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert root in result.stdout


def test_the_library_speaks_of_the_root_not_of_cli_options(tmp_path: Path) -> None:
    import wasmcache

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(wasmcache.NotACacheError, match=r"root=, --cache-dir or \$WASMCACHE_DIR"):
        wasmcache.ModuleCache(mine)


def test_load_of_a_cwasm_points_at_load_precompiled(tmp_path: Path) -> None:
    import wasmtime

    import wasmcache

    own = tmp_path / "own.cwasm"
    own.write_bytes(wasmtime.Module(wasmtime.Engine(), answer_module(58)).serialize())
    with pytest.raises(wasmcache.CompileError, match="load_precompiled"):
        wasmcache.ModuleCache(tmp_path / "c").load(own)


def test_opt_level_as_a_number(tmp_path: Path) -> None:
    import wasmcache

    assert wasmcache.EngineSettings(opt_level=2) == wasmcache.EngineSettings(opt_level="2")  # type: ignore[arg-type]


def test_keygen_out_that_is_not_a_directory_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    for out in (str(tmp_path / "afile"), "/dev/null", ""):
        line = one_line_error(run_cli("keygen", "--out", out))
        assert "--out" in line
    assert not list(tmp_path.glob("*.pem"))


def test_doctor_pid_of_a_missing_process(tmp_path: Path) -> None:
    assert "no such process" in one_line_error(run_cli("doctor", "--pid", "999999999"))


def test_settings_wasmtime_rejects_are_a_usage_error_before_any_file(root: Path, tmp_path: Path) -> None:
    (tmp_path / "a.wasm").write_bytes(answer_module(59))
    line = one_line_error(run_cli("compile", "--cache-dir", str(root), "-W", "gc=y", "-C", "compiler=winch",
                                  str(tmp_path / "a.wasm")))
    assert "wasmtime rejects these engine settings" in line
