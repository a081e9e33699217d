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
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "internal error" not in result.stderr
    return lines[0]


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


@pytest.mark.parametrize("command", ["doctor", "verify", "gc", "ls", "stats"])
def test_a_directory_that_is_not_a_cache_is_one_line_and_no_advice_to_delete(tmp_path: Path, command: str) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    line = one_line_error(run_cli(command, "--cache-dir", str(mine)))
    assert "not a wasmcache cache root" in line
    assert "remove" not in line
    assert (mine / "notes.txt").read_text() == "keep"


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
    assert "expected `(` at" in line  # wasmtime's WAT error, readable on one line


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
