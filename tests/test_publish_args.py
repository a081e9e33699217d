"""`wasmcache publish --revoke` and `--rotate-to` that can only be a mistake: refused up front, in one line.

What an outside tester found: a revoke selector that matches no published artifact (a typo, a patch
version never published, an artifact already revoked) re-signed the tree as if it had done something,
or compiled every input first and then reported them "refused"; a rotation to the key that already
signs wrote a new root for nothing. Each is refused with exit status 2 and one line naming the selector
or key, before anything is compiled or written: the tree stays byte for byte what it was.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

import pytest
import wasmtime

from conftest import run_cli
from wasmcache._core import wasmtime_version
from wasmcache._public._build import compile_at_levels
from wasmcache._public._publish import PublishError, publish
from wasmcache.cli._remote import write_keypair

if TYPE_CHECKING:
    from pathlib import Path

WAT = '(module (func (export "answer") (result i32) i32.const 42))'
OTHER_WAT = '(module (func (export "answer") (result i32) i32.const 43))'


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A signed tree of one module at the lowest level only (one compile): its key, its wasm, its level."""
    work = tmp_path_factory.mktemp("published")
    key, _, _ = write_keypair(work / "keys")
    new_key, _, _ = write_keypair(work / "new-keys")
    wasm = work / "answer.wasm"
    wasm.write_bytes(wasmtime.wat2wasm(WAT))
    publish(work / "tree", compile_at_levels(str(wasm), None, ["baseline"]), signing_key=str(key))
    return {"work": work, "key": str(key), "new_key": str(new_key), "wasm": wasm}


def a_copy(published: dict[str, Any], tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(published["work"] / "tree", tree)
    return tree


def contents(tree: Path) -> dict[str, bytes]:
    """Every file under `tree` (hidden ones too, e.g. the publisher's lock), by relative path."""
    return {str(p.relative_to(tree)): p.read_bytes() for p in sorted(tree.rglob("*")) if p.is_file()}


def assert_refused(proc: Any, *says: str) -> None:
    """Exit status 2, one line on stderr naming `says`, and nothing compiled (no publish line on stdout)."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for text in says:
        assert text in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_a_revoke_that_matches_nothing_is_refused_and_nothing_is_re_signed(published, tmp_path):
    tree = a_copy(published, tmp_path)
    before = contents(tree)
    for selectors in (["wasmtime=0.0.1"], ["level=baseline", "level=x86-64-v9"]):
        # The second: one selector matches, the other does not; neither is applied.
        args = [word for selector in selectors for word in ("--revoke", selector)]
        proc = run_cli("publish", "--out", str(tree), "--signing-key", published["key"], *args)
        assert_refused(proc, f"--revoke {selectors[-1]}", "matches no")
        assert contents(tree) == before
    # Revoked once, it matches nothing the second time: the re-run says so rather than re-signing.
    proc = run_cli("publish", "--out", str(tree), "--signing-key", published["key"], "--revoke", "level=baseline")
    assert proc.returncode == 0, proc.stderr
    after = contents(tree)
    proc = run_cli("publish", "--out", str(tree), "--signing-key", published["key"], "--revoke", "level=baseline")
    assert_refused(proc, "--revoke level=baseline", "matches no")
    assert contents(tree) == after


def test_a_revoke_that_matches_nothing_is_refused_before_compiling_the_inputs(published, tmp_path):
    tree = a_copy(published, tmp_path)
    wasm = str(published["wasm"])
    # The tester's case: this wasmtime's artifacts revoked once, then the same revoke with an input to publish
    # matched nothing, compiled the input, and ended "1 refused" (the rebuild has the revoked bytes).
    this_wasmtime = f"wasmtime={wasmtime_version()}"
    proc = run_cli("publish", "--out", str(tree), "--signing-key", published["key"], "--revoke", this_wasmtime)
    assert proc.returncode == 0, proc.stderr
    before = contents(tree)
    key = ["--signing-key", published["key"]]
    cases = [([*key, "--revoke", this_wasmtime], [f"--revoke {this_wasmtime}", "matches no"]),
             # These two were refused too, but only after the compiles.
             ([*key, "--revoke", "wasmtime"], ["--revoke wasmtime", "expected FIELD=VALUE"]),
             (["--unsigned", "--revoke", "level=baseline"], ["--revoke", "need --signing-key"])]
    for args, says in cases:
        proc = run_cli("publish", "--out", str(tree), *args, "--level", "baseline", wasm)
        assert_refused(proc, *says)
        assert contents(tree) == before
    # A revoke names artifacts already published: in a new tree it can match nothing, not even this run's builds.
    fresh = tmp_path / "fresh"
    proc = run_cli("publish", "--out", str(fresh), "--signing-key", published["key"], "--revoke", "level=baseline",
                   "--level", "baseline", wasm)
    assert_refused(proc, "--revoke level=baseline")
    assert not fresh.exists()


def test_the_library_refuses_a_revoke_that_matches_nothing_before_writing(published, tmp_path):
    tree = a_copy(published, tmp_path)
    before = contents(tree)
    other = tmp_path / "other.wasm"
    other.write_bytes(wasmtime.wat2wasm(OTHER_WAT))
    built = compile_at_levels(str(other), None, ["baseline"])  # new bytes: they would add a file to targets/
    with pytest.raises(PublishError) as refused:
        publish(tree, built, signing_key=published["key"], revoke=["name=nosuch.wasm"])
    assert "--revoke name=nosuch.wasm" in str(refused.value)
    assert contents(tree) == before


def test_rotating_to_the_current_signing_key_is_refused(published, tmp_path):
    tree = a_copy(published, tmp_path)
    before = contents(tree)
    proc = run_cli("publish", "--out", str(tree), "--signing-key", published["key"], "--rotate-to", published["key"])
    assert_refused(proc, f"--rotate-to {published['key']}", "already")
    assert contents(tree) == before
    # The same key under another file name is the same key.
    copy = tmp_path / "same-key.pem"
    shutil.copy(published["key"], copy)
    copy.chmod(0o600)
    proc = run_cli("publish", "--out", str(tree), "--signing-key", published["key"], "--rotate-to", str(copy),
                   "--level", "baseline", str(published["wasm"]))
    assert_refused(proc, f"--rotate-to {copy}", "already")
    assert contents(tree) == before
    # A rotation with no tree to rotate is refused before compiling too.
    fresh = tmp_path / "fresh"
    proc = run_cli("publish", "--out", str(fresh), "--signing-key", published["key"], "--rotate-to",
                   published["new_key"], "--level", "baseline", str(published["wasm"]))
    assert_refused(proc, "--rotate-to", "no tree")
    assert not fresh.exists()
    # A tree whose root is under an offline key: a rotation without it cannot sign the new root.
    offline = tmp_path / "offline"
    root_key, _, _ = write_keypair(tmp_path / "root-keys")
    publish(offline, signing_key=published["key"], root_key=str(root_key))
    before = contents(offline)
    proc = run_cli("publish", "--out", str(offline), "--signing-key", published["key"], "--rotate-to",
                   published["new_key"], "--level", "baseline", str(published["wasm"]))
    assert_refused(proc, "--rotate-to", "--root-key")
    assert contents(offline) == before


def test_revoking_what_this_run_would_build_again_is_refused_before_compiling(published, tmp_path):
    """Compiles are deterministic: revoking an artifact and publishing the same wasm, settings and level with the
    same wasmtime in one run could only end with that build refused (it is the revoked bytes), whatever field
    the selector names. Refused up front; revoking alone works, and so does a revoke beside another input."""
    tree = a_copy(published, tmp_path)
    before = contents(tree)
    wasm = str(published["wasm"])
    major = wasmtime_version().split(".")[0]
    for spec in (f"wasmtime={wasmtime_version()}", f"engine_major={major}", "level=baseline", "kind=module",
                 "name=answer.wasm"):
        proc = run_cli("publish", "--out", str(tree), "--signing-key", published["key"], "--revoke", spec,
                       "--level", "baseline", wasm)
        assert_refused(proc, f"--revoke {spec}", "would build again byte for byte", "revoke alone")
        assert contents(tree) == before
    other = tmp_path / "other.wat"
    other.write_text(OTHER_WAT)
    proc = run_cli("publish", "--out", str(tree), "--signing-key", published["key"], "--revoke", "level=baseline",
                   "--level", "baseline", str(other))
    assert proc.returncode == 0, proc.stderr
    assert "not published again" not in proc.stderr
