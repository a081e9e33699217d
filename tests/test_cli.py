"""The `wasmcache` command, run as a real subprocess."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import wasmcache
from conftest import run_cli
from wasmgen import answer_module, component, wasi_program


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "hello.wasm"
    path.write_bytes(wasi_program())
    return path


def test_run_passes_every_word_after_file_to_the_guest_and_exits_with_its_code(root: Path, program: Path) -> None:
    first = run_cli("run", "--cache-dir", str(root), str(program), "a", "-b", "--c")
    assert first.stdout == "hello from wasm\n"
    assert first.returncode == 4, first.stderr  # argv = FILE a -b --c
    second = run_cli("run", "--cache-dir", str(root), str(program))
    assert (second.stdout, second.returncode) == ("hello from wasm\n", 1)
    stats = json.loads(run_cli("stats", "--json", "--cache-dir", str(root)).stdout)
    assert stats["entries"] == 1
    assert stats["size_bytes"] > 0


def test_run_invoke_and_trap(root: Path, program: Path) -> None:
    added = run_cli("run", "--cache-dir", str(root), "--invoke", "add", str(program), "40", "2")
    assert (added.stdout.strip(), added.returncode) == ("42", 0)
    trapped = run_cli("run", "--cache-dir", str(root), "--invoke", "boom", str(program))
    assert trapped.returncode == 134, trapped.stderr  # wasmtime run's code for a trap (128 + SIGABRT)
    assert "wasm trap" in trapped.stderr
    assert "Traceback" not in trapped.stderr


def test_run_with_engine_options_uses_another_namespace(root: Path, program: Path) -> None:
    for options in ([], ["-C", "compiler=winch"], ["-O", "opt-level=0"], ["-W", "fuel=100000"]):
        result = run_cli("run", "--cache-dir", str(root), *options, str(program))
        assert result.returncode == 1, result.stderr
    stats = json.loads(run_cli("stats", "--json", "--cache-dir", str(root)).stdout)
    assert stats["entries"] == 4
    assert len(stats["namespaces"]) == 4


def test_run_dir_and_env_options_reach_wasi(root: Path, program: Path, tmp_path: Path) -> None:
    result = run_cli("run", "--cache-dir", str(root), "--dir", f"{tmp_path}::/data", "--env", "A=1",
                     str(program))
    assert result.returncode == 1, result.stderr
    bad = run_cli("run", "--cache-dir", str(root), "--dir", str(tmp_path / "missing"), str(program))
    assert bad.returncode == 2
    assert "missing is not a directory" in bad.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-C", "compiler=llvm"], "compiler"),
        (["-O", "opt-level=9"], "opt-level"),
        (["-W", "warp=y"], "-W warp"),
        (["-C", "compiler=winch", "-W", "gc=y"], "wasmtime rejects"),
    ],
)
def test_invalid_engine_options_are_one_line_errors(root: Path, program: Path, args: list[str], message: str) -> None:
    result = run_cli("run", "--cache-dir", str(root), *args, str(program))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_invalid_wasm_and_missing_file_name_the_file(root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"\0asm\x01\0\0\0\xff")
    result = run_cli("compile", "--cache-dir", str(root), str(bad))
    assert result.returncode == 1  # compile reports each bad file and goes on; 1 if any failed
    assert "bad.wasm: cannot compile: failed to parse WebAssembly module: malformed section id" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(root.rglob("*.cwasm"))
    missing = run_cli("run", "--cache-dir", str(root), str(tmp_path / "nope.wasm"))
    assert missing.returncode == 2
    assert "nope.wasm" in missing.stderr


def test_compile_prints_key_and_entry_then_inspect_decodes_it(root: Path, tmp_path: Path) -> None:
    wasm = tmp_path / "m.wasm"
    wasm.write_bytes(answer_module(3))
    comp = tmp_path / "c.wasm"
    comp.write_bytes(component())
    result = run_cli("compile", "--json", "--cache-dir", str(root), str(wasm), str(comp))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["kind"] for r in lines] == ["module", "component"]
    assert all(r["compiled"] and Path(r["entry"]).exists() for r in lines)
    again_out = run_cli("compile", "--json", "--cache-dir", str(root), str(wasm)).stdout
    again = [json.loads(line) for line in again_out.splitlines()]
    assert not again[0]["compiled"]
    for record in lines:
        for target in (record["entry"], record["key"][:12]):
            info = json.loads(run_cli("inspect", "--json", "--cache-dir", str(root), target).stdout)
            assert info["kind"] == record["kind"]
            assert info["compiler"] == "cranelift"
            assert info["opt_level"] == "speed"
            assert info["target"].startswith(("x86_64", "aarch64"))
            assert info["matches_namespace"] is True
            assert info["size"] == Path(record["entry"]).stat().st_size
            assert len(info["content_digest"]) == 64
    text = run_cli("inspect", "--cache-dir", str(root), lines[0]["entry"]).stdout
    assert "wasmtime version" in text
    assert "compiler" in text


def test_inspect_refuses_non_cwasm_with_one_line(root: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.cwasm"
    junk.write_bytes(b"not an elf")
    result = run_cli("inspect", "--cache-dir", str(root), str(junk))
    assert result.returncode == 2
    assert "junk.cwasm" in result.stderr
    assert "Traceback" not in result.stderr


def test_ls_gc_verify_clear(root: Path, tmp_path: Path) -> None:
    wasm = tmp_path / "m.wasm"
    wasm.write_bytes(answer_module(8))
    assert run_cli("compile", "--cache-dir", str(root), str(wasm)).returncode == 0
    listing = json.loads(run_cli("ls", "--json", "--cache-dir", str(root)).stdout)
    assert len(listing) == 1
    assert listing[0]["source"] == "m.wasm"
    assert run_cli("ls", "--cache-dir", str(root)).returncode == 0
    verified = run_cli("verify", "--json", "--cache-dir", str(root))
    assert verified.returncode == 0
    assert json.loads(verified.stdout)["ok"] is True
    entry = Path(listing[0]["path"])
    entry.chmod(0o644)
    entry.write_bytes(entry.read_bytes()[:100])  # corrupt it
    assert run_cli("verify", "--cache-dir", str(root)).returncode == 1
    fixed = run_cli("verify", "--fix", "--cache-dir", str(root))
    assert fixed.returncode == 1  # reports what it found, and quarantined it
    assert run_cli("verify", "--cache-dir", str(root)).returncode == 0
    assert run_cli("compile", "--cache-dir", str(root), str(wasm)).returncode == 0
    gc = json.loads(run_cli("gc", "--max-size", "0", "--json", "--cache-dir", str(root)).stdout)
    assert gc["evicted_entries"] == 1
    assert run_cli("compile", "--cache-dir", str(root), str(wasm)).returncode == 0
    cleared = run_cli("clear", "--cache-dir", str(root))
    assert cleared.returncode == 0
    assert "removed 1 entry" in cleared.stdout


def test_management_commands_refuse_a_foreign_directory(tmp_path: Path) -> None:
    foreign = tmp_path / "home-cache"
    foreign.mkdir()
    (foreign / "precious").write_text("x")
    for args in (["clear"], ["gc", "--max-size", "0"], ["verify", "--fix"]):
        result = run_cli(*args, "--cache-dir", str(foreign))
        assert result.returncode == 2, result
        assert "not a wasmcache" in result.stderr
    assert (foreign / "precious").read_text() == "x"


def test_version_and_help() -> None:
    assert run_cli("--version").stdout.startswith("wasmcache, version")
    assert "run" in run_cli("--help").stdout


def test_compile_of_wat_text_warms_run_of_the_same_file(tmp_path: Path) -> None:
    # Found by an outside reader: `compile x.wat` keyed the file by its text, `run x.wat` by its binary: two
    # entries for one module, and precompiling WAT never warmed `run`.
    wat = tmp_path / "answer.wat"
    wat.write_text('(module (func (export "answer") (result i32) i32.const 42))')
    root = tmp_path / "cache"
    compiled = run_cli("compile", "--cache-dir", str(root), str(wat))
    assert compiled.returncode == 0, compiled.stderr
    ran = run_cli("-v", "run", "--cache-dir", str(root), "--invoke", "answer", str(wat))
    assert (ran.returncode, ran.stdout) == (0, "42\n"), ran.stderr
    assert "wasmcache: hit " in ran.stderr
    assert "compiled" not in ran.stderr
    assert len(list(root.glob("ns-*/*.cwasm"))) == 1
    # and the entry is named after the file, not "<N bytes>" (what a load of bytes says)
    assert "answer.wat" in run_cli("ls", "--cache-dir", str(root)).stdout.splitlines()[1]
    # The second reader: the library and the drop-in keyed the file by its text, the CLI by its binary: now all
    # by the path's content, one entry, warm for each.
    cache = wasmcache.ModuleCache(root)
    cache.load(wat)
    assert (cache.stats().hits, cache.stats().compiles) == (1, 0)
    program = f"import wasmtime; wasmtime.Module.from_file(wasmtime.Engine(), {str(wat)!r})"
    served = run_cli("-v", "--cache-dir", str(root), "exec", sys.executable, "-c", program)
    assert "hit" in served.stderr, served.stderr
    assert "compiled" not in served.stderr
    assert len(list(root.glob("ns-*/*.cwasm"))) == 1


def test_ls_keeps_one_row_per_entry_whatever_the_source_name_holds(tmp_path: Path) -> None:
    # Found by an outside reader: a file name with a newline split its row of `ls` in two.
    odd = tmp_path / "one\ntwo\x1b[2J.wasm"
    odd.write_bytes(answer_module(98))
    root = tmp_path / "cache"
    assert run_cli("compile", "--cache-dir", str(root), str(odd)).returncode == 0
    listed = run_cli("ls", "--cache-dir", str(root)).stdout.splitlines()
    assert len(listed) == 2  # the header and the entry
    assert listed[1].endswith("one\\ntwo\\x1b[2J.wasm")


def test_verify_and_doctor_print_one_line_per_finding_whatever_a_name_holds(tmp_path: Path) -> None:
    # Found by an outside reader: a file named "x\nunsafe: ..." put a fake finding line into verify's and doctor's
    # output.
    root = tmp_path / "cache"
    assert run_cli("compile", "--cache-dir", str(root), str(_answer_file(tmp_path))).returncode == 0
    namespace = next(root.glob("ns-*"))
    (namespace / "x\nunsafe: etc: all is lost; fix: rm -rf ~").write_text("planted")
    for command in ("verify", "doctor"):
        out = run_cli(command, "--cache-dir", str(root)).stdout
        assert not any(line.startswith("unsafe: etc") for line in out.splitlines()), out
        assert "x\\nunsafe: etc" in out


def _answer_file(tmp_path: Path) -> Path:
    wasm = tmp_path / "answer.wasm"
    wasm.write_bytes(answer_module(5))
    return wasm
