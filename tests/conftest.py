from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

# One SeaweedFS server for the whole session, shared by every test module that uses S3.
from s3server import s3_bucket_fixture, s3_server_fixture  # noqa: F401

# Never let a test touch the user's real cache.
os.environ.pop("WASMCACHE_DIR", None)
os.environ.pop("WASMCACHE_DISABLE", None)
os.environ.pop("WASMCACHE_MAX_SIZE", None)


@pytest.fixture(autouse=True)
def _isolated_default_root(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # EngineSettings remembers verdicts under the default root; keep that inside the test's tmp.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def run_python(code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120,
               check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter (the venv's), with tests/ importable."""
    full_env = {**os.environ, **(env or {})}
    tests_dir = str(Path(__file__).parent)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [tests_dir, full_env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_json(code: str, *args: str, **kwargs: Any) -> Any:
    """Run `code` in a fresh interpreter; it prints one JSON document as its last line."""
    proc = run_python(code, *args, **kwargs)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def declaring_site(site: Path, declarations: dict[str, str], modules: dict[str, str] | None = None) -> Path:
    """A directory for PYTHONPATH holding one installed distribution whose `wasmcache.substituters` entry
    points are `declarations` (name -> "module:attribute"), and the `modules` (name -> source) they name."""
    info = site / "declaring_tools-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: declaring-tools\nVersion: 1.0\n")
    points = "".join(f"{name} = {target}\n" for name, target in declarations.items())
    (info / "entry_points.txt").write_text(f"[wasmcache.substituters]\n{points}")
    for name, source in (modules or {}).items():
        (site / f"{name}.py").write_text(source)
    return site


def published_tree(work: Path, wat: str) -> tuple[Path, Path, Path]:
    """A signed substituter tree at work/tree publishing `wat` as work/answer.wasm, compiled for every CPU
    level: (the signing key, the wasm, the tree)."""
    import wasmtime

    from wasmcache._public._build import compile_at_levels
    from wasmcache._public._publish import publish
    from wasmcache.cli._remote import write_keypair

    key, _, _ = write_keypair(work / "keys")
    wasm = work / "answer.wasm"
    wasm.write_bytes(wasmtime.wat2wasm(wat))
    publish(work / "tree", compile_at_levels(str(wasm), None, None), signing_key=str(key))
    return key, wasm, work / "tree"


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "wasmcache.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, check=False, input=input_text)


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A real tmpfs at `mount` (made here), unmounted afterwards; the test is skipped where none can be mounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def remount_read_only(mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small real tmpfs (8 MiB), e.g. to remount read-only under a cache root."""
    with mounted_tmpfs(tmp_path / "tmpfs", "size=8m") as mount:
        yield mount
