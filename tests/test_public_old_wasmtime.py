"""Substituters with the older wasmtime-py majors wasmcache supports (>= 40; YoWASP pins 44-47).

wasmtime-py < 45 has no `Config.target` nor the Cranelift flag setters, so the publisher's
`level_config` reaches the C API (47 takes `Config.target` and the C API for the flags; 50 is the
suite's own venv). Here a throwaway virtualenv with an old wasmtime-py (from the package registry)
runs wasmcache from this source tree: `wasmcache publish` at every level this
runner can compile, then a consumer in the same venv, with a fresh HOME and only the substituter in
its environment, loads the module substituted (its record says so, and the level) and runs it
correctly; a second tree holding only the `baseline` level proves a lower level loads and runs too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import wasmcache
from wasmgen import answer_module

SRC = str(Path(wasmcache.__file__).resolve().parent.parent)
# What `wasmcache publish`/`run`/`ls` need besides wasmtime (pyproject's dependencies).
DEPENDENCIES = ("blake3", "platformdirs", "tuf>=7,<8", "cryptography", "zstandard", "click", "rich")
# Vector code, so that the level an artifact was compiled for decides which instructions run.
SIMD_WAT = """
(module
  (func (export "dot") (param i32 i32) (result i32)
    (i32x4.extract_lane 2
      (i32x4.add
        (i32x4.mul (i32x4.splat (local.get 0)) (i32x4.splat (local.get 1)))
        (v128.const i32x4 0 0 0 0))))
)
"""
_SCRUBBED = ("XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "WASMTIME_BACKTRACE_DETAILS")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def pip_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pip-cache")


@pytest.fixture(scope="module", params=["47", "44", "40"])
def old_python(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               pip_cache: Path) -> tuple[str, str]:
    major: str = request.param
    venv = tmp_path_factory.mktemp(f"wasmtime-{major}") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", "--cache-dir", str(pip_cache),
                           f"wasmtime=={major}.*", *DEPENDENCIES], capture_output=True, text=True, timeout=600,
                          check=False)
    if done.returncode != 0:
        pytest.fail(f"cannot install wasmtime {major}.* into a throwaway venv:\n{done.stderr[-2000:]}")
    version = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('wasmtime'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version.split(".")[0] == major
    return python, version


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's environment: a fresh HOME, no XDG_* or WASMCACHE_*, this checkout on the path."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED and not k.startswith("WASMCACHE_")}
    env.update(HOME=str(home), PYTHONPATH=SRC, **extra)
    home.mkdir(parents=True, exist_ok=True)
    return env


def cli(python: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-m", "wasmcache.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


# The library consumer (old wasmtime-py's `--invoke` takes no arguments): the default root, `dot(a, b)`.
DOT = """
import sys, wasmtime, wasmcache
cache = wasmcache.ModuleCache()
module = cache.load(sys.argv[1])
store = wasmtime.Store(cache.engine)
print(wasmtime.Instance(store, module, []).exports(store)["dot"](store, int(sys.argv[2]), int(sys.argv[3])))
"""


def dot(python: str, env: dict[str, str], wasm: Path, a: int, b: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-c", DOT, str(wasm), str(a), str(b)], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def published_levels(tree: Path) -> dict[str, dict[str, Any]]:
    """level -> its signed custom metadata (from the tree's current targets)."""
    versions = sorted(tree.glob("metadata/*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
    targets = json.loads(versions[-1].read_text())["signed"]["targets"]
    return {info["custom"]["level"]: info["custom"] for info in targets.values()}


def test_publish_and_substitute_with_an_old_wasmtime_major(old_python, tmp_path):
    python, version = old_python
    major = version.split(".")[0]
    work = tmp_path / "work"
    work.mkdir()
    answer = work / "answer.wasm"
    answer.write_bytes(answer_module(4242, functions=16))
    simd = work / "simd.wasm"
    simd.write_text(SIMD_WAT)
    publisher = user_env(tmp_path / "publisher-home")
    made = cli(python, publisher, "keygen", "--out", str(work / "keys"))
    assert made.returncode == 0, made.stderr
    key = str(work / "keys" / "wasmcache-signing.pem")

    # The publisher: every level this runner can compile, through the C API on wasmtime-py < 45.
    tree = work / "tree"
    done = cli(python, publisher, "publish", "--out", str(tree), "--signing-key", key, str(answer), str(simd))
    assert done.returncode == 0, done.stderr
    levels = published_levels(tree)
    assert "baseline" in levels
    assert {custom["engine_major"] for custom in levels.values()} == {major}
    # Each level's artifact claims exactly its own CPU features (the flags reached Cranelift).
    assert levels["baseline"]["isa"] == []
    if "x86-64-v3" in levels:
        assert "has_avx2" in levels["x86-64-v3"]["isa"]
        assert "has_avx2" not in levels.get("x86-64-v2", {"isa": []})["isa"]
    highest = next(name for name in ("x86-64-v4", "x86-64-v3", "x86-64-v2", "baseline") if name in levels)

    # The consumer: same old venv, fresh HOME (the default root), only the substituter configured.
    consumer = user_env(tmp_path / "consumer-home", WASMCACHE_SUBSTITUTERS=f"file://{tree}",
                        WASMCACHE_SUBSTITUTER_ROOTS=str(tree / "root.json"))
    ran = cli(python, consumer, "run", "--invoke", "answer", str(answer))
    assert (ran.returncode, ran.stdout) == (0, "4242\n"), ran.stderr
    ran = dot(python, consumer, simd, 6, 7)
    assert (ran.returncode, ran.stdout) == (0, "42\n"), ran.stderr
    listed = json.loads(cli(python, consumer, "ls", "--json").stdout)
    assert len(listed) == 2
    assert {(i["origin"], i["level"], i["substituter"], i["wasmtime_version"]) for i in listed} == {
        ("substituted", highest, f"file://{tree}", version)}
    assert str(tmp_path / "consumer-home") in listed[0]["path"]  # the user's own default root

    # Later starts are local hits: the substituter may be gone.
    gone = dict(consumer, WASMCACHE_SUBSTITUTERS="file:///nonexistent-tree")
    ran = cli(python, gone, "run", "--invoke", "answer", str(answer))
    assert (ran.returncode, ran.stdout) == (0, "4242\n"), ran.stderr

    # A lower level than the host's best loads and runs correctly too.
    low = work / "low"
    done = cli(python, publisher, "publish", "--out", str(low), "--signing-key", key, "--level", "baseline",
               str(answer), str(simd))
    assert done.returncode == 0, done.stderr
    assert set(published_levels(low)) == {"baseline"}
    consumer = user_env(tmp_path / "low-home", WASMCACHE_SUBSTITUTERS=f"file://{low}",
                        WASMCACHE_SUBSTITUTER_ROOTS=str(low / "root.json"))
    ran = dot(python, consumer, simd, -3, 5)
    assert (ran.returncode, ran.stdout) == (0, "-15\n"), ran.stderr
    ran = cli(python, consumer, "run", "--invoke", "answer", str(answer))
    assert (ran.returncode, ran.stdout) == (0, "4242\n"), ran.stderr
    listed = json.loads(cli(python, consumer, "ls", "--json").stdout)
    assert {(i["origin"], i["level"]) for i in listed} == {("substituted", "baseline")}
