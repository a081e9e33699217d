"""Everything that parses on-disk or user data fails only with our errors (issue #4, item 7)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wasmcache
from wasmcache._core import Record
from wasmcache._elf import ENGINE_SECTION, find_section
from wasmgen import answer_module

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CWASM = bytes(wasmtime.Module(wasmtime.Engine(), answer_module(1, functions=4)).serialize())


def _record_json() -> bytes:
    return Record(key="a" * 64, kind="module", wasm_digest="b" * 64, content_digest="c" * 64, size=10,
                  identity=None, source="x.wasm", wasmtime_version="50.0.1", created=1.0).to_json()


@FUZZ
@given(st.binary(max_size=2048))
def test_records_from_random_bytes(raw: bytes) -> None:
    with contextlib.suppress(ValueError):
        Record.from_json(raw)


@FUZZ
@given(st.dictionaries(st.sampled_from(["key", "kind", "wasm_digest", "content_digest", "size", "identity",
                                        "source", "wasmtime_version", "created", "version"]),
                       st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70),
                                    lambda inner: st.lists(inner, max_size=3)
                                    | st.dictionaries(st.text(max_size=8), inner, max_size=5),
                                    max_leaves=10)))
def test_records_with_wrong_field_types(fields: dict[str, object]) -> None:
    base = json.loads(_record_json())
    base.update(fields)
    with contextlib.suppress(ValueError):
        Record.from_json(json.dumps(base).encode())


def test_a_record_round_trips_and_refuses_a_key_that_is_not_64_lowercase_hex_digits() -> None:
    record = Record.from_json(_record_json())
    assert Record.from_json(record.to_json()) == record
    fields = json.loads(_record_json())
    for bad in ("a" * 64 + "\n", "A" * 64, "a" * 63, "a" * 65, "g" * 64, " " + "a" * 63, "\u0661" * 64):
        with pytest.raises(ValueError, match="record field key is missing or malformed"):
            Record.from_json(json.dumps(fields | {"key": bad}).encode())


@FUZZ
@given(st.binary(max_size=512), st.integers(min_value=0, max_value=len(CWASM)))
def test_elf_reader_on_random_and_truncated_files(noise: bytes, cut: int) -> None:
    for data in (noise, CWASM[:cut], CWASM[:cut] + noise, noise + CWASM[cut:]):
        with contextlib.suppress(ValueError):
            find_section(data, ENGINE_SECTION)


@FUZZ
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=len(CWASM) - 1), st.integers(0, 255)), max_size=8))
def test_elf_reader_on_mutated_headers(mutations: list[tuple[int, int]]) -> None:
    data = bytearray(CWASM)
    for position, value in mutations:
        data[position % 64 if position % 2 else position] = value  # half of them in the ELF header
    with contextlib.suppress(ValueError):
        find_section(bytes(data), ENGINE_SECTION)


@FUZZ
@given(st.text(max_size=30) | st.integers(min_value=-(10**6), max_value=10**15))
def test_size_strings(value: str | int) -> None:
    try:
        result = wasmcache.parse_size(value)
    except wasmcache.ConfigError:
        return
    assert result >= 0


OPTION_WORDS = ["compiler", "opt-level", "fuel", "exceptions", "gc", "epoch-interruption", "debug-info", "tail-call"]


@FUZZ
@given(st.lists(st.text(max_size=20) | st.builds(lambda k, v: f"{k}={v}", st.sampled_from(OPTION_WORDS),
                                                  st.text(max_size=8)), max_size=4),
       st.lists(st.text(max_size=20), max_size=2), st.lists(st.text(max_size=20), max_size=2))
def test_engine_options(wasm: list[str], codegen: list[str], optimize: list[str]) -> None:
    with contextlib.suppress(wasmcache.ConfigError):
        wasmcache.EngineSettings.from_options(wasm, codegen, optimize)


@FUZZ
@given(st.sampled_from(["stats", "ls", "verify", "inspect", "gc", "doctor", "compile", "run"]),
       st.lists(st.sampled_from(["--json", "--fix", "--max-size", "-W", "-C", "-O", "--pid", "--cache-dir",
                                 "--invoke", "--dir", "x", "0", "-1", "1G", "ab12", "compiler=winch", "/nonexistent"])
                | st.text(max_size=12), max_size=5))
def test_cli_arguments_end_in_clean_errors(tmp_path_factory: pytest.TempPathFactory, command: str,
                                           args: list[str]) -> None:
    from wasmcache.cli import main

    root = tmp_path_factory.mktemp("fuzz-root")
    previous = Path.cwd()
    os.chdir(root)  # a random --cache-dir is relative: keep it inside the test's tmp
    argv = [command, *args] if command in ("run", "compile") else [command, "--cache-dir", str(root), *args]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as exit_:
            code = exit_.code
        else:
            code = 0
        finally:
            os.chdir(previous)
    assert code in (0, 1, 2), (argv, code, err.getvalue())
    assert "internal error" not in err.getvalue()
    assert "Traceback" not in err.getvalue()
