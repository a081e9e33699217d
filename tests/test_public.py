"""Substituters end to end: `wasmcache publish` trees served by a real Caddy over HTTPS (and file://),
fetched by the consumer client, and every attack and failure of issue 13 on real servers.

Each test copies one published tree into Caddy's document root under its own name, changes it the way
an attacker or a broken host would, and asks the client. A miss must leave the caller's file empty
and say why in one line; wasmtime must only ever see a checked artifact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from caddy_server import caddy_fixture  # noqa: F401 - the `caddy` fixture
from conftest import declaring_site, run_cli, run_python
from wasmcache._compat import isa_flags
from wasmcache._core import engine_identity, wasm_digest
from wasmcache._public import _client, _transport, resolve_substituter_settings
from wasmcache._public._build import compile_at_levels
from wasmcache._public._levels import TARGETS_DIR
from wasmcache._public._publish import Tree, load_signer, publish
from wasmcache.cli._remote import write_keypair

WAT = '(module (func (export "answer") (result i32) i32.const 42))'


@pytest.fixture(autouse=True)
def _fresh_process_state() -> None:
    _client.forget()  # each test is "a new process" for the client's once-per-process memory


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("published")
    key, _pub, _ = write_keypair(work / "keys")
    other_key, _, _ = write_keypair(work / "other-keys")
    new_key, _, _ = write_keypair(work / "new-keys")
    wasm = work / "answer.wasm"
    wasm.write_bytes(wasmtime.wat2wasm(WAT))
    built = compile_at_levels(str(wasm), None, None)
    publish(work / "tree", built, signing_key=str(key))
    return {"work": work, "key": str(key), "other_key": str(other_key), "new_key": str(new_key), "wasm": wasm,
            "digest": wasm_digest(wasm.read_bytes()), "levels": [b.custom["level"] for b in built]}


def host_section() -> bytes:
    return engine_identity(wasmtime.Engine()).section


def serve(published: dict[str, Any], caddy: Any, name: str) -> tuple[Path, str]:
    tree = caddy.root / name
    shutil.copytree(published["work"] / "tree", tree)
    return tree, f"{caddy.url}/{name}"


class Outcome(tuple):  # noqa: SLOT001 - (fetched, why), plus whether the substituter's answer failed verification
    rejected: bool


def fetch(url: str, root: Path | bytes, dest: Path, *, ca: str | None = None, state: Path | None = None,
          section: bytes | None = None, digest: str | None = None, wasm_digest_: str = "") -> Outcome:
    root_file = root if isinstance(root, Path) else None
    settings = resolve_substituter_settings([url], [str(root_file)], ca_file=ca, declared=False)
    assert settings is not None
    tier = _client.PublicTier(settings, state_dir=state)
    fetched = tier.fetch(kind="module", wasm_digest=digest or wasm_digest_, host_section=section or host_section(),
                         dest=str(dest), name="answer.wasm")
    outcome = Outcome((fetched, tier.last_reason))
    outcome.rejected = tier.last_rejected
    return outcome


def runs(path: Path) -> int:
    engine = wasmtime.Engine()
    module = wasmtime.Module.deserialize_file(engine, str(path))
    store = wasmtime.Store(engine)
    result: int = wasmtime.Instance(store, module, []).exports(store)["answer"](store)
    return result


# What a user must never read in a one-line reason: a library's raw exception text.
RAW_TEXTS = ("Errno", "HTTPConnection", "HTTPSConnection", "ConnectionPool", "_ssl.c", "Traceback", "Error(", "\n")


def assert_miss(result: Outcome, dest: Path, reason: str, *, rejected: bool | None = None) -> None:
    """A miss that says `reason` in plain words, names the substituter, and leaves nothing partial; `rejected`:
    whether the client itself calls the answer a failed verification (no words of the reason are matched)."""
    fetched, why = result
    assert fetched is None
    assert why is not None
    assert reason in why, why
    assert why.startswith(("https://", "http://", "file://")), why  # "URL: what is wrong"
    assert not any(raw in why for raw in RAW_TEXTS), why
    if rejected is not None:
        assert result.rejected is rejected, why
    assert not dest.exists() or dest.stat().st_size == 0  # nothing partial left


# --- the happy paths -------------------------------------------------------------------------------------


def test_https_fetch_picks_the_highest_level_this_host_runs_and_it_runs(published, caddy, tmp_path):
    tree, url = serve(published, caddy, "happy")
    dest = tmp_path / "entry.cwasm"
    fetched, why = fetch(url, tree / "root.json", dest, ca=str(caddy.ca_file), digest=published["digest"])
    assert why is None, why
    assert fetched.level == published["levels"][0]  # every level is ⊆ this host (it compiled them)
    assert fetched.url == url
    assert fetched.size == dest.stat().st_size
    assert runs(dest) == 42


def test_a_host_without_avx512_gets_v3(published, caddy, tmp_path):
    if "x86-64-v4" not in published["levels"]:
        pytest.skip("this runner cannot compile x86-64-v4")
    tree, url = serve(published, caddy, "nov4")
    # This host's section with the AVX-512 flags cleared: what a Haswell laptop's engine reports.
    section = bytearray(host_section())
    for name in sorted(isa_flags(bytes(section))):
        if name.startswith("has_avx512"):
            needle = bytes([len(name)]) + name.encode() + b"\x02\x01"
            at = bytes(section).index(needle)
            section[at + len(needle) - 1] = 0
    dest = tmp_path / "entry.cwasm"
    fetched, why = fetch(url, tree / "root.json", dest, ca=str(caddy.ca_file), section=bytes(section),
                         digest=published["digest"])
    assert why is None
    assert fetched.level == "x86-64-v3"


def test_file_url_and_the_cli(published, tmp_path):
    tree = published["work"] / "tree"
    dest = tmp_path / "entry.cwasm"
    fetched, why = fetch(f"file://{tree}", tree / "root.json", dest, digest=published["digest"])
    assert why is None
    assert runs(dest) == 42
    assert fetched.url == f"file://{tree}"


def test_without_the_test_ca_https_is_unreachable_not_an_error(published, caddy, tmp_path):
    tree, url = serve(published, caddy, "noca")
    dest = tmp_path / "entry.cwasm"
    assert_miss(fetch(url, tree / "root.json", dest, digest=published["digest"]), dest,
                "unreachable: TLS certificate not trusted (unable to get local issuer certificate)", rejected=False)


def test_publishing_again_and_merging_parts_keeps_every_artifact_byte_identical(published, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(published["work"] / "tree", tree)
    before = {p.name: p.read_bytes() for p in (tree / TARGETS_DIR).iterdir()}
    other = tmp_path / "other.wasm"
    other.write_bytes(wasmtime.wat2wasm('(module (func (export "answer") (result i32) i32.const 43))'))
    part = tmp_path / "part"
    proc = run_cli("publish", "--unsigned", "--out", str(part), "--level", "x86-64-v2", str(other))
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("publish", "--out", str(tree), "--signing-key", published["key"], "--merge", str(part),
                   str(published["wasm"]))
    assert proc.returncode == 0, proc.stderr
    assert "1 artifact(s) added" in proc.stderr
    assert "already published" in proc.stderr
    after = {p.name: p.read_bytes() for p in (tree / TARGETS_DIR).iterdir()}
    assert {k: after[k] for k in before} == before
    assert len(after) == len(before) + 1
    dest = tmp_path / "entry.cwasm"
    fetched, why = fetch(f"file://{tree}", tree / "root.json", dest, digest=wasm_digest(other.read_bytes()))
    assert why is None
    assert fetched.level == "x86-64-v2"
    assert runs(dest) == 43


# --- attacks ---------------------------------------------------------------------------------------------


def _one_target(tree: Path, level: str) -> Path:
    return next(p for p in (tree / TARGETS_DIR).iterdir() if p.name.endswith(f"-{level}.cwasm.zst"))


def _only_level(tree: Path, published: dict[str, Any], keep: str) -> None:
    """Revoke every level but `keep` (so an attack on that one is what the client meets)."""
    for level in published["levels"]:
        if level != keep:
            publish(tree, signing_key=published["key"], revoke=[f"level={level}"])


@pytest.mark.parametrize("damage", ["tampered", "truncated", "endless"])
def test_a_damaged_artifact_is_a_miss_and_nothing_reaches_wasmtime(published, caddy, tmp_path, damage):
    tree, url = serve(published, caddy, f"damaged-{damage}")
    level = published["levels"][0]
    _only_level(tree, published, level)
    target = _one_target(tree, level)
    data = bytearray(target.read_bytes())
    if damage == "tampered":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncated":
        del data[len(data) // 2:]
    else:
        data += os.urandom(1 << 20) * 8  # far beyond the signed length
    target.write_bytes(bytes(data))
    dest = tmp_path / "entry.cwasm"
    assert_miss(fetch(url, tree / "root.json", dest, ca=str(caddy.ca_file), digest=published["digest"]),
                dest, "untrusted: artifact", rejected=True)


def test_metadata_signed_by_an_unknown_key_is_untrusted(published, caddy, tmp_path):
    other = tmp_path / "other-tree"
    built = compile_at_levels(str(published["wasm"]), None, ["x86-64-v2"])
    publish(other, built, signing_key=published["other_key"])  # same layout, another publisher's key
    name = "unknown-key"
    shutil.copytree(other, caddy.root / name)
    dest = tmp_path / "entry.cwasm"
    # The consumer trusts the real publisher's root; the mirror serves the other key's metadata.
    assert_miss(fetch(f"{caddy.url}/{name}", published["work"] / "tree" / "root.json", dest,
                      ca=str(caddy.ca_file), digest=published["digest"]), dest,
                "untrusted: timestamp metadata is not signed by a key of the trusted root (0 of 1 required signatures)",
                rejected=True)


def test_rollback_to_older_metadata_is_refused(published, caddy, tmp_path):
    tree, url = serve(published, caddy, "rollback")
    old_timestamp = (tree / "metadata" / "timestamp.json").read_bytes()
    publish(tree, signing_key=published["key"], revoke=["level=baseline"])
    state = tmp_path / "state"
    dest = tmp_path / "entry.cwasm"
    fetched, why = fetch(url, tree / "root.json", dest, ca=str(caddy.ca_file), state=state,
                         digest=published["digest"])
    assert fetched is not None, why
    (tree / "metadata" / "timestamp.json").write_bytes(old_timestamp)  # the mirror serves the old state
    _client.forget()  # a later process, with the same state directory
    dest.unlink()
    assert_miss(fetch(url, tree / "root.json", dest, ca=str(caddy.ca_file), state=state,
                      digest=published["digest"]), dest,
                "untrusted: rolled-back metadata (timestamp version 1, older than version 2 seen before)",
                rejected=True)


def test_expired_metadata_is_a_miss_that_says_so(published, caddy, tmp_path):
    tree, url = serve(published, caddy, "frozen")
    from tuf.api.metadata import Metadata
    from tuf.api.serialization.json import JSONSerializer

    path = tree / "metadata" / "timestamp.json"
    timestamp = Metadata.from_bytes(path.read_bytes())
    timestamp.signed.expires = timestamp.signed.expires.replace(year=2020)  # a frozen mirror's old answer
    timestamp.signatures.clear()
    timestamp.sign(load_signer(published["key"]))
    path.write_bytes(timestamp.to_bytes(JSONSerializer()))
    dest = tmp_path / "entry.cwasm"
    assert_miss(fetch(url, tree / "root.json", dest, ca=str(caddy.ca_file), digest=published["digest"]),
                dest, f"timestamp metadata expired on {timestamp.signed.expires:%Y-%m-%d %H:%M} UTC", rejected=False)


def test_mix_and_match_of_metadata_versions_is_refused(published, caddy, tmp_path):
    tree, url = serve(published, caddy, "mixmatch")
    publish(tree, signing_key=published["key"], revoke=["level=baseline"])
    # The mirror answers the current snapshot's request for targets v2 with the older targets v1.
    (tree / "metadata" / "2.targets.json").write_bytes((tree / "metadata" / "1.targets.json").read_bytes())
    dest = tmp_path / "entry.cwasm"
    assert_miss(fetch(url, tree / "root.json", dest, ca=str(caddy.ca_file), digest=published["digest"]),
                dest, "untrusted: mix-and-match metadata", rejected=True)


def test_key_rotation_keeps_old_consumers_working(published, caddy, tmp_path):
    tree, url = serve(published, caddy, "rotation")
    old_root = tmp_path / "old-root.json"
    shutil.copy(tree / "root.json", old_root)
    proc = run_cli("publish", "--out", str(tree), "--signing-key", published["key"],
                   "--rotate-to", published["new_key"])
    assert proc.returncode == 0, proc.stderr
    assert (tree / "metadata" / "2.root.json").exists()
    for trusted in (old_root, tree / "root.json"):  # an old consumer, and a new one given the new root
        _client.forget()
        dest = tmp_path / f"entry-{trusted.name}.cwasm"
        fetched, why = fetch(url, trusted, dest, ca=str(caddy.ca_file), digest=published["digest"])
        assert fetched is not None, why
    # The old key can no longer publish: it is gone from the new root.
    proc = run_cli("publish", "--out", str(tree), "--signing-key", published["key"], str(published["wasm"]))
    assert proc.returncode == 2
    assert "not a key of this tree" in proc.stderr


def test_revoked_artifacts_are_never_selected(published, caddy, tmp_path):
    tree, url = serve(published, caddy, "revoked")
    top = published["levels"][0]
    proc = run_cli("publish", "--out", str(tree), "--signing-key", published["key"], "--revoke", f"level={top}")
    assert proc.returncode == 0
    assert "revoked" in proc.stdout
    dest = tmp_path / "entry.cwasm"
    fetched, why = fetch(url, tree / "root.json", dest, ca=str(caddy.ca_file), digest=published["digest"])
    assert fetched is not None, why
    assert fetched.level == published["levels"][1]
    publish(tree, signing_key=published["key"], revoke=["wasmtime=" + wasmtime_version()])
    _client.forget()
    assert_miss(fetch(url, tree / "root.json", dest, ca=str(caddy.ca_file), digest=published["digest"]),
                dest, "none published")


def wasmtime_version() -> str:
    from wasmcache._core import wasmtime_version as version

    return version()


def test_a_forged_above_host_variant_is_never_chosen_nor_loaded(published, caddy, tmp_path):
    """A variant whose section claims a CPU feature this host lacks, signed by the real key."""
    import zstandard

    from test_public_compat import host_lacks, set_isa_flag
    from wasmcache._elf import ENGINE_SECTION, find_section
    from wasmcache._public._build import Built, target_custom
    from wasmcache._public._levels import target_path

    missing = host_lacks()
    tree, url = serve(published, caddy, "forged")
    for level in published["levels"]:
        publish(tree, signing_key=published["key"], revoke=[f"level={level}"])
    base = compile_at_levels(str(published["wasm"]), None, ["baseline"])[0]
    artifact = zstandard.ZstdDecompressor().decompress(base.data)
    section = find_section(artifact, ENGINE_SECTION)
    forged_section = set_isa_flag(section, missing)
    forged = artifact.replace(section, forged_section)
    packed = zstandard.ZstdCompressor().compress(forged)
    custom = target_custom(kind="module", digest=published["digest"], section=forged_section, level="x86-64-v4",
                           wasmtime_version=wasmtime_version(), artifact=forged, compressed=packed,
                           name="answer.wasm", settings="forged", seconds=0)
    honest = Built(target_path("module", published["digest"], custom["abi"], "x86-64-v4"), packed, custom)
    publish(tree, [honest], signing_key=published["key"])
    dest = tmp_path / "entry.cwasm"
    assert_miss(fetch(url, tree / "root.json", dest, ca=str(caddy.ca_file), digest=published["digest"]),
                dest, "other CPU level", rejected=False)
    # The same bytes with metadata that lies (claims no ISA flags): downloaded, then refused by the section check.
    lying = Built(target_path("module", published["digest"], custom["abi"], "x86-64-v3"), packed,
                  {**custom, "isa": [], "level": "x86-64-v3"})
    publish(tree, [lying], signing_key=published["key"])
    _client.forget()
    assert_miss(fetch(url, tree / "root.json", dest, ca=str(caddy.ca_file), digest=published["digest"]),
                dest, f"artifact refused: needs CPU features this host lacks: {missing}", rejected=True)


# --- failures of the host --------------------------------------------------------------------------------


def test_403_and_404_are_plain_misses(published, caddy, tmp_path):
    dest = tmp_path / "entry.cwasm"
    root = published["work"] / "tree" / "root.json"
    assert_miss(fetch(f"{caddy.url}/denied/x", root, dest, ca=str(caddy.ca_file), digest=published["digest"]),
                dest, "none published (HTTP 403 for its metadata)", rejected=False)
    assert_miss(fetch(f"{caddy.url}/nothing-here", root, dest, ca=str(caddy.ca_file), digest=published["digest"]),
                dest, "HTTP 404")
    tree, url = serve(published, caddy, "other-module")
    assert_miss(fetch(url, tree / "root.json", dest, ca=str(caddy.ca_file), digest="0" * 64), dest,
                "none published")


def test_a_dead_host_costs_one_attempt_per_process(published, tmp_path):
    from caddy_server import free_port

    url = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    dest = tmp_path / "entry.cwasm"
    root = published["work"] / "tree" / "root.json"
    assert_miss(fetch(url, root, dest, digest=published["digest"]), dest, "unreachable: connection refused",
                rejected=False)
    # Another tree on the same host: the host's circuit is open, no second attempt.
    assert_miss(fetch(f"{url}/other", root, dest, digest=published["digest"]), dest,
                "failed earlier in this process")


def test_a_host_that_never_answers_costs_at_most_one_timeout_per_process(published, tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # accepts (the kernel completes the handshake) and never says a word
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        dest = tmp_path / "entry.cwasm"
        root = published["work"] / "tree" / "root.json"
        assert_miss(fetch(url, root, dest, digest=published["digest"]), dest,
                    f"timed out after {_transport.METADATA_READ_TIMEOUT:g} s without data", rejected=False)
        assert_miss(fetch(f"{url}/other", root, dest, digest=published["digest"]), dest,
                    "failed earlier in this process")


def test_a_tls_host_that_never_completes_the_handshake_says_so(published, tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # accepts; never answers the ClientHello
        dest = tmp_path / "entry.cwasm"
        assert_miss(fetch(f"https://127.0.0.1:{listener.getsockname()[1]}", published["work"] / "tree" / "root.json",
                          dest, digest=published["digest"]), dest,
                    f"unreachable: TLS handshake timed out after {_transport.CONNECT_TIMEOUT:g} s", rejected=False)


class MisbehavingHost:
    """A raw TCP server on 127.0.0.1 that answers every connection one bad way: "reset" (accepts, then
    aborts with RST) or "short" (announces 1000 bytes of body, sends 10, closes)."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import struct

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                if self.how == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    continue
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"{" * 10)

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize(("how", "says"), [("reset", "connection reset"),
                                           ("short", "connection broken mid-transfer")])
def test_a_host_that_breaks_the_connection_is_a_miss_that_says_how(published, tmp_path, how, says):
    host = MisbehavingHost(how)
    try:
        dest = tmp_path / "entry.cwasm"
        assert_miss(fetch(host.url, published["work"] / "tree" / "root.json", dest, digest=published["digest"]),
                    dest, says, rejected=False)
    finally:
        host.close()


def test_a_host_whose_backlog_is_full_costs_one_connect_timeout_that_says_so(published, tmp_path):
    """A SYN to a listener whose accept queue is full is dropped: the connect itself times out."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        fillers = []
        try:
            for _ in range(8):  # fill the accept queue (nothing accepts), so further SYNs are dropped
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(address)
                fillers.append(filler)
            time.sleep(0.2)
            dest = tmp_path / "entry.cwasm"
            started = time.monotonic()
            assert_miss(fetch(f"http://127.0.0.1:{address[1]}", published["work"] / "tree" / "root.json", dest,
                              digest=published["digest"]), dest,
                        f"unreachable: connect timed out after {_transport.CONNECT_TIMEOUT:g} s", rejected=False)
            assert time.monotonic() - started < _transport.CONNECT_TIMEOUT + 3  # one timeout, no retry
        finally:
            for filler in fillers:
                filler.close()


def test_a_stalled_download_is_abandoned_and_nothing_partial_is_left(published, tmp_path):
    """A real HTTP server that serves the metadata and stalls halfway through every artifact."""
    import http.server

    tree = published["work"] / "tree"

    class Stalling(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tree), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if "/targets/" not in self.path:
                super().do_GET()
                return
            data = (tree / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            time.sleep(_client.STALL_TIMEOUT + 3)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dest = tmp_path / "entry.cwasm"
        assert_miss(fetch(f"http://127.0.0.1:{server.server_address[1]}", tree / "root.json", dest,
                          digest=published["digest"]), dest,
                    f"timed out after {_client.STALL_TIMEOUT:g} s without data", rejected=False)
    finally:
        server.shutdown()


def test_disk_full_mid_download_leaves_nothing(published, tmp_path):
    tree = published["work"] / "tree"
    dest = tmp_path / "entry.cwasm"
    code = f"""
        import json, resource, signal, wasmtime
        from wasmcache._core import engine_identity
        from wasmcache._public import PublicTier, resolve_substituter_settings
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        section = engine_identity(wasmtime.Engine()).section
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        tier = PublicTier(resolve_substituter_settings(["file://{tree}"], ["{tree / 'root.json'}"], declared=False))
        fetched = tier.fetch(kind="module", wasm_digest="{published['digest']}", host_section=section,
                             dest="{dest}", name="answer.wasm")
        print(json.dumps([fetched is None, tier.last_reason]))
    """
    proc = run_python(code)
    missed, reason = json.loads(proc.stdout.strip().splitlines()[-1])
    assert missed
    assert "File too large" in reason, reason
    assert not dest.exists()


# --- settings -------------------------------------------------------------------------------------------


def test_settings_from_the_environment_and_bad_values(published, monkeypatch, tmp_path):
    from wasmcache._errors import ConfigError

    tree = published["work"] / "tree"
    monkeypatch.setenv("WASMCACHE_SUBSTITUTERS", f"file://{tree}  https://example.invalid/x")
    monkeypatch.setenv("WASMCACHE_SUBSTITUTER_ROOTS", str(tree / "root.json"))
    settings = resolve_substituter_settings(declared=False)
    assert [s.url for s in settings.substituters] == [f"file://{tree}", "https://example.invalid/x"]
    assert resolve_substituter_settings([], declared=False) is None
    monkeypatch.setenv("WASMCACHE_SUBSTITUTERS", "ftp://x")
    with pytest.raises(ConfigError, match="expected an https://"):
        resolve_substituter_settings()
    monkeypatch.setenv("WASMCACHE_SUBSTITUTERS", f"file://{tree}")
    monkeypatch.delenv("WASMCACHE_SUBSTITUTER_ROOTS")
    with pytest.raises(ConfigError, match="no trusted root"):
        resolve_substituter_settings()
    monkeypatch.setenv("WASMCACHE_SUBSTITUTER_ROOTS", str(published["wasm"]))
    with pytest.raises(ConfigError, match=r"not a TUF root\.json"):
        resolve_substituter_settings()


def test_a_tools_entry_point_declares_its_substituter(published, tmp_path):
    """An installed package declares url + root; a consumer with no configuration at all uses it."""
    tree = published["work"] / "tree"
    site = declaring_site(tmp_path / "site", {"demo": "demo_tool:SUBSTITUTER"}, {
        "demo_tool": f"SUBSTITUTER = {{'url': 'file://{tree}', 'root': {str(tree / 'root.json')!r}}}\n"})
    dest = tmp_path / "entry.cwasm"
    code = f"""
        import json, wasmtime
        from wasmcache._core import engine_identity
        from wasmcache._public import PublicTier, resolve_substituter_settings
        settings = resolve_substituter_settings()
        tier = PublicTier(settings)
        fetched = tier.fetch(kind="module", wasm_digest="{published['digest']}",
                             host_section=engine_identity(wasmtime.Engine()).section, dest="{dest}", name="a")
        print(json.dumps([fetched is not None and fetched.url, tier.last_reason]))
    """
    env = {"PYTHONPATH": str(site), "WASMCACHE_SUBSTITUTERS": "", "WASMCACHE_SUBSTITUTER_ROOTS": ""}
    url, reason = json.loads(run_python(code, env=env).stdout.strip().splitlines()[-1])
    assert url == f"file://{tree}", reason


def test_broken_declarations_are_one_plain_line_each_and_a_bad_environment_keeps_the_good_ones(published, tmp_path):
    tree = published["work"] / "tree"
    site = tmp_path / "site"
    declarations = {  # entry point name -> the module's text
        "good": f"SUBSTITUTER = {{'url': 'file://{tree}', 'root': {str(tree / 'root.json')!r}}}",
        "noroot": f"SUBSTITUTER = {{'url': 'file://{tree}'}}",
        "astring": "SUBSTITUTER = 'file:///srv/tree'",
        "introot": f"SUBSTITUTER = {{'url': 'file://{tree}', 'root': 7}}",
        "raises": "def SUBSTITUTER():\n    raise KeyError('root')",
    }
    declaring_site(site, {name: f"decl_{name}:SUBSTITUTER" for name in declarations},
                   {f"decl_{name}": text + "\n" for name, text in declarations.items()})
    dest = tmp_path / "entry.cwasm"
    code = f"""
        import json, wasmtime
        from wasmcache._core import engine_identity
        from wasmcache._public import PublicTier, settings_for_cache
        tier = PublicTier(settings_for_cache(None, None))
        fetched = tier.fetch(kind="module", wasm_digest="{published['digest']}",
                             host_section=engine_identity(wasmtime.Engine()).section, dest="{dest}", name="a")
        print(json.dumps([fetched is not None and fetched.url, tier.last_reason]))
    """
    # The user's own variables are bad (a URL with a typo): the tools' declarations are still asked.
    env = {"PYTHONPATH": str(site), "WASMCACHE_SUBSTITUTERS": "htps://typo", "WASMCACHE_SUBSTITUTER_ROOTS": ""}
    done = run_python(code, env=env)
    url, reason = json.loads(done.stdout.strip().splitlines()[-1])
    assert url == f"file://{tree}", reason
    lines = done.stderr.splitlines()
    assert len(lines) == 5, done.stderr  # the environment, then each broken declaration: one line each
    assert "htps://typo" in lines[0]
    assert "only the substituters tools declare are asked" in lines[0]
    said = {line.split("entry point ", 1)[1].split(" ", 1)[0]: line for line in lines[1:]}
    assert "its mapping has no 'root'" in said["noroot"]
    assert "expected a mapping with 'url' and 'root', got str" in said["astring"]
    assert "'root' must be a path to root.json or its bytes, got int" in said["introot"]
    assert "loading it failed: KeyError: 'root'" in said["raises"]
    assert not any(raw in done.stderr for raw in ("Traceback", "string indices")), done.stderr
    assert not any(line.endswith("ignored: 'root'") for line in lines), done.stderr  # a bare KeyError's text


def test_check_substituters_reports_each_one(published, caddy, tmp_path):
    from caddy_server import free_port

    tree, url = serve(published, caddy, "doctor")
    settings = resolve_substituter_settings([url, f"http://127.0.0.1:{free_port()}"], [str(tree / "root.json")],
                                            ca_file=str(caddy.ca_file), declared=False)
    good, dead = _client.check_substituters(settings)
    assert good.ok
    assert "root v1" in good.detail
    assert "valid until" in good.detail
    assert not dead.ok
    assert "unreachable" in dead.detail


def test_importing_the_settings_does_not_import_tuf():
    proc = run_python("""
        import sys
        import wasmcache._public as p
        p.resolve_substituter_settings([], declared=False)
        heavy = [m for m in ("tuf", "urllib3", "zstandard", "securesystemslib", "cryptography", "wasmtime")
                 if m in sys.modules]
        print(heavy)
    """)
    assert proc.stdout.strip() == "[]"


def test_tree_loads_and_verifies(published):
    tree = Tree(published["work"] / "tree")
    assert tree.root is not None
    assert tree.root.signed.consistent_snapshot


def test_a_state_directory_remembers_a_dead_host_and_a_missing_module_briefly(published, tmp_path):
    from caddy_server import free_port

    state = tmp_path / "state"
    dest = tmp_path / "entry.cwasm"
    root = published["work"] / "tree" / "root.json"
    dead = f"http://127.0.0.1:{free_port()}"
    assert_miss(fetch(dead, root, dest, state=state, digest=published["digest"]), dest, "connection refused")
    _client.forget()  # the next process, same cache root: no connection attempt at all
    assert_miss(fetch(dead, root, dest, state=state, digest=published["digest"]), dest, "remembered for 60 s")
    tree = published["work"] / "tree"
    assert_miss(fetch(f"file://{tree}", root, dest, state=state, digest="1" * 64), dest, "none published")
    (tree / "metadata" / "timestamp.json").rename(tree / "metadata" / "timestamp.json.away")
    try:
        _client.forget()  # the metadata is not even read again for that module
        assert_miss(fetch(f"file://{tree}", root, dest, state=state, digest="1" * 64), dest,
                    "none published (remembered for 300 s)")
        # ... while a module that was never looked up does read it (and finds no metadata)
        _client.forget()
        assert_miss(fetch(f"file://{tree}", root, dest, state=state, digest=published["digest"]), dest,
                    "none published (no such file for its metadata)")
    finally:
        (tree / "metadata" / "timestamp.json.away").rename(tree / "metadata" / "timestamp.json")


def test_progress_is_reported_through_a_callback(published, tmp_path):
    tree = published["work"] / "tree"
    seen: list[tuple[Any, ...]] = []
    settings = resolve_substituter_settings([f"file://{tree}"], [str(tree / "root.json")], declared=False)
    tier = _client.PublicTier(settings, progress=lambda *event: seen.append(event))
    fetched = tier.fetch(kind="module", wasm_digest=published["digest"], host_section=host_section(),
                         dest=str(tmp_path / "entry.cwasm"), name="answer.wasm")
    assert fetched is not None
    name, level, url, done, total = seen[0]
    assert (name, level, url, done) == ("answer.wasm", fetched.level, f"file://{tree}", 0)
    assert seen[-1][3] == seen[-1][4] == total == fetched.compressed_size


def test_a_download_slower_than_a_compile_is_abandoned(published, tmp_path):
    """A host that never stalls long enough for a timeout but dribbles: the deadline ends it."""
    import http.server

    tree = published["work"] / "tree"

    class Dribbling(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tree), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if "/targets/" not in self.path:
                super().do_GET()
                return
            data = (tree / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.5)
            except OSError:
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dribbling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dest = tmp_path / "entry.cwasm"
        assert_miss(fetch(f"http://127.0.0.1:{server.server_address[1]}", tree / "root.json", dest,
                          digest=published["digest"]), dest, "slower than compiling locally")
    finally:
        server.shutdown()


class DrippingHost:
    """A real HTTP server on 127.0.0.1 that serves the tree but paces one part a byte per 0.3 s (each read
    sees data well within any read timeout), for at most 20 s: "headers" (of every response), "metadata"
    (the body of every metadata file), "artifact" (the headers of every artifact) or "error-page" (the
    body of every 404, as for the next root, which is never published)."""

    def __init__(self, tree: Path, part: str) -> None:
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = tree / self.path.lstrip("/")
                if not path.is_file() and part == "error-page":
                    self.wfile.write(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 200\r\n\r\n")
                    with contextlib.suppress(OSError):
                        drip(self.wfile, b"n" * 200)
                    return
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                slow_headers = part == "headers" or (part == "artifact" and "/targets/" in self.path)
                # Connection: close, as it does close: a pooled connection it dropped must not be reused.
                head = f"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {len(data)}\r\n".encode()
                try:
                    if slow_headers:
                        self.wfile.write(head)
                        drip(self.wfile, b"X-Pad: " + b"a" * 200)
                        return
                    self.wfile.write(head + b"\r\n")
                    if part == "metadata" and "/metadata/" in self.path:
                        drip(self.wfile, data)
                    else:
                        self.wfile.write(data)
                except OSError:
                    pass

        def drip(out: Any, data: bytes) -> None:
            ends = time.monotonic() + 20
            for i in range(len(data)):
                if time.monotonic() > ends:
                    return
                out.write(data[i:i + 1])
                out.flush()
                time.sleep(0.3)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("part", "says"), [("headers", "too slow: its metadata took over 2 s"),
                                            ("metadata", "too slow: its metadata took over 2 s"),
                                            ("artifact", "slower than compiling locally")],
                         ids=["headers", "metadata", "artifact"])
def test_a_dripping_host_is_abandoned_at_a_deadline(published, tmp_path, monkeypatch, part, says):
    """A read timeout is per read: a host that sends a byte every 0.3 s never meets it. The refresh as a
    whole, and an artifact's headers, end at a deadline; the host is then down for this process."""
    monkeypatch.setattr(_transport, "METADATA_DEADLINE", 2.0)
    tree = published["work"] / "tree"
    host = DrippingHost(tree, part)
    try:
        dest = tmp_path / "entry.cwasm"
        started = time.monotonic()
        assert_miss(fetch(host.url, tree / "root.json", dest, digest=published["digest"]), dest, says,
                    rejected=False)
        assert time.monotonic() - started < 2.0 + _client.DEADLINE_FLOOR + 3  # not the 20 s of dripping
        again = "failed earlier in this process" if part == "artifact" else says  # the failed refresh is kept
        assert_miss(fetch(host.url, tree / "root.json", dest, digest=published["digest"]), dest, again)
    finally:
        host.close()


def test_a_host_that_drips_its_404_pages_still_serves_the_module_at_once(published, tmp_path):
    """Every refresh asks for the next root and gets a 404: its page is not waited for."""
    tree = published["work"] / "tree"
    host = DrippingHost(tree, "error-page")
    try:
        dest = tmp_path / "entry.cwasm"
        started = time.monotonic()
        fetched, why = fetch(host.url, tree / "root.json", dest, digest=published["digest"])
        assert fetched is not None, why
        assert time.monotonic() - started < 5  # not the 60 s a 200-byte page takes at 0.3 s a byte
    finally:
        host.close()


def test_ssl_cert_file_makes_the_test_ca_trusted_in_a_fresh_process(published, caddy, tmp_path):
    tree, url = serve(published, caddy, "sslcertfile")
    dest = tmp_path / "entry.cwasm"
    code = f"""
        import json, wasmtime
        from wasmcache._core import engine_identity
        from wasmcache._public import PublicTier, resolve_substituter_settings
        tier = PublicTier(resolve_substituter_settings())
        fetched = tier.fetch(kind="module", wasm_digest="{published['digest']}",
                             host_section=engine_identity(wasmtime.Engine()).section, dest="{dest}", name="a")
        print(json.dumps([fetched is not None and fetched.level, tier.last_reason]))
    """
    env = {"SSL_CERT_FILE": str(caddy.ca_file), "WASMCACHE_SUBSTITUTERS": url,
           "WASMCACHE_SUBSTITUTER_ROOTS": str(tree / "root.json")}
    level, reason = json.loads(run_python(code, env=env).stdout.strip().splitlines()[-1])
    assert level == published["levels"][0], reason


def test_other_engine_settings_and_other_majors_are_misses_that_say_so(published, tmp_path):
    from wasmcache._engine import EngineSettings

    tree = tmp_path / "fuel-tree"
    built = compile_at_levels(str(published["wasm"]), EngineSettings(consume_fuel=True), ["x86-64-v2"])
    publish(tree, built, signing_key=published["key"])
    dest = tmp_path / "entry.cwasm"
    # A consumer whose engine has no fuel: the fuel build is not its ABI.
    assert_miss(fetch(f"file://{tree}", tree / "root.json", dest, digest=published["digest"]), dest,
                "other engine settings")
    # A consumer on another wasmtime major (its section's version string says so).
    section = bytearray(host_section())
    section[2:2 + section[1]] = b"9" * section[1]
    _client.forget()
    assert_miss(fetch(f"file://{tree}", tree / "root.json", dest, section=bytes(section),
                      digest=published["digest"]), dest, "other wasmtime major")


def test_publish_without_inputs_re_signs_with_a_later_expiry(published, tmp_path):
    from tuf.api.metadata import Metadata

    tree = tmp_path / "tree"
    shutil.copytree(published["work"] / "tree", tree)
    before = Metadata.from_bytes((tree / "metadata" / "timestamp.json").read_bytes()).signed
    proc = run_cli("publish", "--out", str(tree), "--signing-key", published["key"], "--expires-days", "90")
    assert proc.returncode == 0, proc.stderr
    assert "0 artifact(s) added" in proc.stderr
    after = Metadata.from_bytes((tree / "metadata" / "timestamp.json").read_bytes()).signed
    assert after.version == before.version + 1
    assert (after.expires - before.expires).days >= 59
    settings = resolve_substituter_settings([f"file://{tree}"], [str(tree / "root.json")], declared=False)
    (check,) = _client.check_substituters(settings)
    assert check.ok, check.detail
    assert check.expires == after.expires.strftime("%Y-%m-%d %H:%M UTC")


@pytest.mark.parametrize("word", ["none", "NONE", " None "])
def test_none_turns_off_every_substituter(monkeypatch, word):
    monkeypatch.setenv("WASMCACHE_SUBSTITUTERS", word)
    assert resolve_substituter_settings() is None


def test_doctor_says_which_declared_substituters_none_turns_off(tmp_path):
    site = declaring_site(tmp_path / "site", {"mytool": "mytool_decl:S"},
                          {"mytool_decl": "S = {'url': 'file:///srv/tree', 'root': b'{}'}\n"})
    doctor = run_cli("doctor", env={"PYTHONPATH": str(site), "WASMCACHE_SUBSTITUTERS": "none"})
    assert doctor.returncode == 0, doctor.stdout
    assert "none: the substituters installed tools declare (mytool) are not asked" in doctor.stdout


@pytest.mark.s3
def test_a_tree_uploaded_create_only_to_s3_is_read_anonymously(published, s3_bucket, tmp_path, monkeypatch):
    import boto3

    server, bucket = s3_bucket
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3")
    tree = published["work"] / "tree"
    prefix = "mytool"
    # Immutable files first and create-only (never overwritten), then the one replaced file, then root.json.
    mutable = (tree / "metadata" / "timestamp.json", tree / "root.json")
    immutable = sorted(p for p in tree.rglob("*") if p.is_file() and p not in mutable)
    for path in [*immutable, *mutable]:
        key = f"{prefix}/{path.relative_to(tree)}"
        extra = {"IfNoneMatch": "*"} if path in immutable else {}
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(), **extra)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject"],
                                                      "Resource": [f"arn:aws:s3:::{bucket}/*"]}]}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)  # the consumer holds no credentials at all
    dest = tmp_path / "entry.cwasm"
    fetched, why = fetch(f"{server.endpoint}/{bucket}/{prefix}", tree / "root.json", dest, digest=published["digest"])
    assert fetched is not None, why
    assert runs(dest) == 42


def test_fetch_into_a_callers_write_only_temp_file_descriptor(published, tmp_path):
    """The cache's miss path hands its own locked, O_WRONLY temp file: the check must still read it back."""
    tree = published["work"] / "tree"
    temp = tmp_path / "entry.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        settings = resolve_substituter_settings([f"file://{tree}"], [str(tree / "root.json")], declared=False)
        tier = _client.PublicTier(settings)
        fetched = tier.fetch(kind="module", wasm_digest=published["digest"], host_section=host_section(), dest=fd,
                             name="answer.wasm")
        assert fetched is not None, tier.last_reason
        assert os.fstat(fd).st_size == fetched.size
    finally:
        os.close(fd)
    assert runs(temp) == 42


# --- what an outside reader found (each failed before its fix) -------------------------------------------


def test_a_revoked_artifact_never_comes_back_on_a_later_publish(published, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(published["work"] / "tree", tree)
    top = published["levels"][0]
    # Revoke, then publish the same build again (the same wasmtime: the same bytes). In one step, that is refused
    # up front (tests/test_publish_args.py); in two, the second must not bring the revoked bytes back.
    for args in (["--revoke", f"level={top}"], ["--level", top, str(published["wasm"])]):
        proc = run_cli("publish", "--out", str(tree), "--signing-key", published["key"], *args)
        assert proc.returncode == 0, proc.stderr
    dest = tmp_path / "entry.cwasm"
    fetched, why = fetch(f"file://{tree}", tree / "root.json", dest, digest=published["digest"])
    assert fetched is not None, why
    assert fetched.level != top  # the same bytes as the revoked artifact: never published again


def test_an_interrupted_publish_can_be_run_again(published, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(published["work"] / "tree", tree)
    version = json.loads((tree / "metadata" / "timestamp.json").read_text())["signed"]["version"]
    # What a publish killed before its timestamp leaves: next versions' files no consumer has seen.
    for name in (f"{version + 1}.targets.json", f"{version + 1}.snapshot.json"):
        (tree / "metadata" / name).write_text('{"half": "written"}')
    proc = run_cli("publish", "--out", str(tree), "--signing-key", published["key"])
    assert proc.returncode == 0, proc.stderr
    dest = tmp_path / "entry.cwasm"
    fetched, why = fetch(f"file://{tree}", tree / "root.json", dest, digest=published["digest"])
    assert fetched is not None, why


def test_publish_refuses_bad_arguments_before_compiling(published, tmp_path):
    out = tmp_path / "tree"
    shutil.copytree(published["work"] / "tree", out)
    before = sorted(p.name for p in (out / "targets").iterdir())
    odd = tmp_path / os.fsdecode(b"bad\xffname.wasm")
    odd.write_bytes(published["wasm"].read_bytes())
    public_key = Path(published["key"]).with_suffix(".pub")
    for args, says in ((["--signing-key", str(public_key), str(published["wasm"])], "not a private key"),
                       (["--signing-key", published["other_key"], str(published["wasm"])], "not a key of this tree"),
                       (["--signing-key", published["key"], str(odd)], "not UTF-8"),
                       (["--signing-key", published["key"], "--level", "", str(published["wasm"])], "--level")):
        proc = run_cli("publish", "--out", str(out), *args)
        assert proc.returncode == 2, proc.stderr
        assert says in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stdout == ""  # nothing was compiled
    assert sorted(p.name for p in (out / "targets").iterdir()) == before
    # The key is named by the id `wasmcache keygen` printed for it, so a publisher can tell which one it was.
    kid = run_cli("keygen", "--out", str(tmp_path / "k")).stdout.split("key id", 1)[1].split()[0]
    proc = run_cli("publish", "--out", str(out), "--signing-key", str(tmp_path / "k" / "wasmcache-signing.pem"))
    assert f"key id {kid}" in proc.stderr, (kid, proc.stderr)
    file_out = tmp_path / "a-file"
    file_out.write_text("")
    proc = run_cli("publish", "--out", str(file_out), "--signing-key", published["key"], str(published["wasm"]))
    assert proc.returncode == 2
    assert "not a directory" in proc.stderr


def test_bad_substituter_urls_and_roots_are_one_line_config_errors(published, monkeypatch):
    from wasmcache import ConfigError

    root = str(published["work"] / "tree" / "root.json")
    for url in ("http://127.0.0.1:99999/tree", "http://[::1/tree", "file://tree", "https:///tree"):
        with pytest.raises(ConfigError) as refused:
            resolve_substituter_settings([url], [root])
        assert url in str(refused.value)
    # One root given as a string or as its bytes is one root, not a sequence of characters.
    assert resolve_substituter_settings(["file:///t"], root).substituters[0].roots == (Path(root).read_bytes(),)
    assert resolve_substituter_settings(["file:///t"], [Path(root).read_bytes()]).substituters[0].roots == (
        Path(root).read_bytes(),)
    monkeypatch.setenv("WASMCACHE_SUBSTITUTERS", "http://127.0.0.1:99999/tree")
    monkeypatch.setenv("WASMCACHE_SUBSTITUTER_ROOTS", root)
    doctor = run_cli("doctor")
    assert "internal error" not in doctor.stderr + doctor.stdout
    assert "99999" in doctor.stdout


def test_keygen_with_stdout_closed_writes_no_key(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(f"'{sys.executable}' -m wasmcache.cli keygen --out '{tmp_path / 'keys'}' >&-", shell=True,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "standard output is closed" in proc.stderr
    assert not (tmp_path / "keys").exists()  # a second run must not find half of what the first did


def test_credentials_in_a_substituter_url_are_refused_and_never_shown(published, tmp_path):
    """urllib3 sends no credentials from a URL; printing or recording them would leak them. A fresh machine:
    new HOME, no XDG_*/WASMCACHE_* but the substituter settings."""
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    root = str(published["work"] / "tree" / "root.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "WASMCACHE_"))} | {
        "HOME": str(home), "WASMCACHE_SUBSTITUTERS": "https://alice:s3cret@127.0.0.1:1/tree",
        "WASMCACHE_SUBSTITUTER_ROOTS": root}
    code = "import sys, wasmcache; print(wasmcache.ModuleCache().load(sys.argv[1]) is not None)"
    load = subprocess.run([sys.executable, "-c", code, str(published["wasm"])], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert (load.returncode, load.stdout) == (0, "True\n"), load.stderr
    assert load.stderr.count("\n") == 1, load.stderr
    assert "carries no credentials" in load.stderr
    doctor = subprocess.run([sys.executable, "-m", "wasmcache.cli", "doctor"], capture_output=True, text=True,
                            env=env, timeout=120, check=False)
    assert "carries no credentials" in doctor.stdout, doctor.stdout
    given = run_cli("pull", "--substituter", "http://bob:hunter2@127.0.0.1:1/t", "--substituter-root", root,
                    str(published["wasm"]), env={"HOME": str(home)})
    assert given.returncode == 2, given.stderr
    assert given.stderr.count("\n") == 1, given.stderr
    assert "carries no credentials" in given.stderr
    for text in (load.stdout, load.stderr, doctor.stdout, doctor.stderr, given.stdout, given.stderr):
        assert not any(secret in text for secret in ("s3cret", "hunter2", "alice", "bob"))
    assert not any("s3cret" in p.read_text(errors="replace") for p in home.rglob("*") if p.is_file())
    # Whatever the form (another scheme, a scheme in capitals, a password with a slash), never shown.
    from wasmcache import ConfigError

    for url in ("file://alice:s3cret@localhost/tmp/x", "HTTP://alice:s3cret@127.0.0.1:1", "ftp://alice:s3cret@h/x",
                "http://alice:s3/cret@127.0.0.1:1", "https://alice:s3cret@h/a b"):
        with pytest.raises(ConfigError) as refused:
            resolve_substituter_settings([url], [root])
        assert "s3" not in str(refused.value), refused.value
        assert "alice" not in str(refused.value), refused.value


def test_doctor_suggests_a_ca_only_for_an_https_host_whose_certificate_failed(published, tmp_path):
    root = str(published["work"] / "tree" / "root.json")
    doctor = run_cli("doctor", env={"WASMCACHE_SUBSTITUTERS": "http://127.0.0.1:1/tree",
                                    "WASMCACHE_SUBSTITUTER_ROOTS": root})
    assert "connection refused" in doctor.stdout, doctor.stdout
    assert "SUBSTITUTER_CA" not in doctor.stdout
    assert "check the URL and that the host is up" in doctor.stdout  # advice that fits, not just the consequence
