"""Substituters as an outside reader broke them (README + `--help` only), each fixed with its test:
`publish` refuses what it would refuse after minutes of compiling before the first compile, a URL with a
space says how to write it, a host that answers missing files with a page is named as such, and doctor
reports a tool package's broken substituter declaration instead of "no problems found".

Real `wasmcache` processes with a fresh HOME and no XDG_*/WASMCACHE_*, a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, ClassVar

import pytest
import wasmtime

from conftest import declaring_site

if TYPE_CHECKING:
    from pathlib import Path

ADD = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'


def fresh_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WASMCACHE_", "XDG_"))}
    home.mkdir(parents=True, exist_ok=True)  # a new user's, empty (a missing one is never made: test_new_user)
    env["HOME"] = str(home)
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wasmcache.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300, check=False)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "add.wasm").write_bytes(wasmtime.wat2wasm(ADD))
    made = cli("keygen", "--out", "keys", env=fresh_env(tmp_path / "home"), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    return tmp_path


def publish(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("publish", "--signing-key", "keys/wasmcache-signing.pem", *args, env=fresh_env(work / "home"), cwd=work)


def test_publish_refuses_an_output_under_a_file_and_bad_inputs_before_compiling(work: Path) -> None:
    (work / "afile").write_text("")
    (work / "notes.wasm").write_text("hello")
    cases = {("--out", "afile/sub", "add.wasm"): "afile is not a directory",
             ("--out", "t", "add.wasm", "notes.wasm"): "notes.wasm: neither a wasm binary nor WAT text",
             ("--out", "t", "add.wasm", "missing.wasm"): "missing.wasm: cannot read it"}
    for args, said in cases.items():
        proc = publish(work, *args)
        assert proc.returncode == 2, args
        assert proc.stdout == "", args  # not one level compiled
        assert proc.stderr.count("\n") == 1
        assert said in proc.stderr
        assert "internal error" not in proc.stderr
    assert not (work / "t").exists()


def test_a_file_url_with_a_space_says_to_write_it_as_percent_20(work: Path) -> None:
    assert publish(work, "--out", "sp tree", "--level", "baseline", "add.wasm").returncode == 0
    env = fresh_env(work / "home")
    words = ["run", "--substituter-root", "sp tree/root.json", "--invoke", "add", "add.wasm", "3", "4"]
    spaced = cli("run", "--substituter", f"file://{work}/sp tree", *words[1:], env=env, cwd=work)
    assert spaced.returncode == 2
    assert "%20" in spaced.stderr
    quoted = cli("-v", "run", "--substituter", f"file://{work}/sp%20tree", *words[1:], env=env, cwd=work)
    assert quoted.returncode == 0, quoted.stderr
    assert quoted.stdout.strip() == "7"
    assert "substituted add.wasm" in quoted.stderr


class _PageForMissing(http.server.SimpleHTTPRequestHandler):
    """A single-page-app host: a missing file is 200 with a page, never 404."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:  # noqa: ARG002
        body = b"<!doctype html><html><body>app</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def test_a_host_that_answers_missing_files_with_a_page_is_named_and_the_module_compiles(work: Path) -> None:
    assert publish(work, "--out", "tree", "--level", "baseline", "add.wasm").returncode == 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_PageForMissing, directory=str(work / "tree")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        proc = cli("run", "--substituter", url, "--substituter-root", "tree/root.json", "--invoke", "add", "add.wasm",
                   "3", "4", env=fresh_env(work / "home"), cwd=work)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "7"
    (line,) = proc.stderr.splitlines()
    assert "not JSON" in line
    assert "404" in line


def test_doctor_reports_a_tool_packages_broken_substituter_declaration_once(work: Path) -> None:
    declaring_site(work / "site", {"badtool": "badtool:SUBSTITUTER", "broken": "no_such_module_here:X"}, {
        "badtool": 'SUBSTITUTER = {"url": "https://example.invalid/tree", "root": "/nonexistent/root.json"}\n'})
    proc = cli("doctor", env=fresh_env(work / "home", PYTHONPATH=str(work / "site")), cwd=work)
    assert "Traceback" not in proc.stderr
    out = proc.stdout + proc.stderr
    assert out.count("entry point badtool") == 1
    assert out.count("entry point broken") == 1
    assert "substituter not used" in out
    assert "no problems found" not in out


class _Counting(http.server.SimpleHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Counting.requests.append(self.path)
        super().do_GET()

    def log_message(self, *_args: object) -> None:
        pass


def test_a_host_without_a_tree_is_asked_once_per_module_not_by_every_process(work: Path) -> None:
    (work / "empty").mkdir()
    assert publish(work, "--out", "tree", "--level", "baseline", "add.wasm").returncode == 0
    _Counting.requests = []
    handler = functools.partial(_Counting, directory=str(work / "empty"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        env = fresh_env(work / "home")
        words = ["--substituter", url, "--substituter-root", "tree/root.json", "--invoke", "add", "add.wasm", "1", "2"]
        first = cli("-v", "run", *words, env=env, cwd=work)
        asked = len(_Counting.requests)
        for namespace in (work / "home" / ".cache" / "wasmcache").glob("ns-*"):
            shutil.rmtree(namespace)  # the second process misses locally too (its trusted state stays)
        second = cli("-v", "run", *words, env=env, cwd=work)
    finally:
        server.shutdown()
        server.server_close()
    assert first.returncode == second.returncode == 0
    assert first.stdout.strip() == second.stdout.strip() == "3"
    assert "none published" in first.stderr
    assert asked >= 1
    assert "compiled" in second.stderr
    assert len(_Counting.requests) == asked  # "none published" remembered: the second process asks nothing
