"""What the CLI shows of substitution (issue 13, item 3): `stats`, `verify` and `inspect` name the
substituter and CPU level of a substituted entry next to compiled ones, and `doctor` checks each
configured substituter against the metadata this cache root's consumer already trusts (reachable, root
valid, expiry, rollback, artifacts fitting this host) without ever writing that state.

Real `wasmcache publish` trees over file:// and a real Caddy over HTTPS on 127.0.0.1, real consumers in
fresh processes (one with a fresh HOME and no XDG_*/WASMCACHE_*: the real default root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from caddy_server import caddy_fixture, free_port  # noqa: F401 - the `caddy` fixture
from conftest import published_tree
from wasmcache._public import _client
from wasmcache._public._build import compile_at_levels
from wasmcache._public._publish import load_signer, publish
from wasmcache.cli._remote import write_keypair

PUBLISHED_WAT = '(module (func (export "answer") (result i32) i32.const 73))'
LOCAL_WAT = '(module (func (export "answer") (result i32) i32.const 37))'
_SCRUBBED = ("XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "WASMTIME_BACKTRACE_DETAILS")


@pytest.fixture(autouse=True)
def _fresh_client() -> None:
    _client.forget()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("views")
    key, wasm, published = published_tree(work, PUBLISHED_WAT)
    local = work / "local.wasm"
    local.write_bytes(wasmtime.wat2wasm(LOCAL_WAT))
    return {"wasm": wasm, "local": local, "tree": published, "root": published / "root.json", "key": key}


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's environment: a fresh HOME, no XDG_* or WASMCACHE_* but `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED and not k.startswith("WASMCACHE_")}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), **extra)
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wasmcache.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def copy_tree(tree: dict[str, Path], where: Path) -> Path:
    shutil.copytree(tree["tree"], where)
    return where


def substituted_env(home: Path, url: str, tree: dict[str, Path], **extra: str) -> dict[str, str]:
    return user_env(home, WASMCACHE_SUBSTITUTERS=url, WASMCACHE_SUBSTITUTER_ROOTS=str(tree["root"]), **extra)


def no_traceback(*procs: subprocess.CompletedProcess[str]) -> None:
    for proc in procs:
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# --- stats, verify, inspect -------------------------------------------------------------------------


def test_stats_verify_and_inspect_name_the_substituter_and_level_of_a_substituted_entry(tree, tmp_path):
    served = copy_tree(tree, tmp_path / "served")
    url = f"file://{served}"
    env = substituted_env(tmp_path / "home", url, tree)  # the default root under a fresh HOME
    ran = cli(env, "run", "--invoke", "answer", str(tree["wasm"]))
    assert (ran.returncode, ran.stdout) == (0, "73\n"), ran.stderr
    ran = cli(env, "run", "--invoke", "answer", str(tree["local"]))  # not published: compiled here
    assert (ran.returncode, ran.stdout) == (0, "37\n"), ran.stderr
    listed = {info["origin"]: info for info in json.loads(cli(env, "ls", "--json").stdout)}
    assert set(listed) == {"substituted", "compiled"}
    entry = listed["substituted"]
    level = entry["level"]
    assert level in ("x86-64-v4", "x86-64-v3", "x86-64-v2", "baseline")
    assert str(tmp_path / "home") in entry["path"]

    # stats: entries and bytes per origin, and per substituter and level.
    stats = cli(env, "stats")
    assert stats.returncode == 0, stats.stderr
    assert "substituted   1 entry, " in stats.stdout
    assert f"{level}, from {url}" in stats.stdout, stats.stdout
    origins_line = next(line for line in stats.stdout.splitlines() if line.startswith("origins"))
    assert "compiled 1" in origins_line
    assert "substituted 1" in origins_line
    data = json.loads(cli(env, "stats", "--json").stdout)
    rows = {row["origin"]: row for row in data["origins"]}
    assert rows["substituted"] == {"origin": "substituted", "substituter": url, "level": level, "entries": 1,
                                   "size_bytes": entry["size"], "sharing": 0}
    assert rows["compiled"]["entries"] == 1
    assert rows["compiled"]["substituter"] is None

    # verify: the substituted entry checks out, and the summary says where it came from.
    verified = cli(env, "verify")
    assert verified.returncode == 0, verified.stdout
    assert f"1 substituted from {url} ({level})" in verified.stdout
    assert json.loads(cli(env, "verify", "--json").stdout)["origins"] == data["origins"]

    # inspect: by key, text and JSON.
    key = entry["key"][:16]
    shown = cli(env, "inspect", key)
    assert shown.returncode == 0, shown.stderr
    lines = dict(line.split(None, 1) if " " in line else (line, "") for line in shown.stdout.splitlines()
                 if not line.startswith(" "))
    assert lines["origin"].strip() == "substituted"
    assert lines["substituter"].strip() == url
    assert lines["level"].strip() == level
    info = json.loads(cli(env, "inspect", "--json", key).stdout)
    assert (info["origin"], info["substituter"], info["level"]) == ("substituted", url, level)
    local_key = listed["compiled"]["key"][:16]
    info = json.loads(cli(env, "inspect", "--json", local_key).stdout)
    assert (info["origin"], info["substituter"], info["level"]) == ("compiled", None, None)

    # A damaged substituted entry: verify's finding names where it came from.
    path = Path(entry["path"])
    path.chmod(0o644)
    data_bytes = bytearray(path.read_bytes())
    data_bytes[len(data_bytes) // 2] ^= 0xFF
    path.write_bytes(bytes(data_bytes))
    damaged = cli(env, "verify")
    assert damaged.returncode == 1
    (finding,) = [line for line in damaged.stdout.splitlines() if str(path) in line]
    assert f"(substituted from {url}, {level})" in finding
    (found,) = json.loads(cli(env, "verify", "--json").stdout)["findings"]
    assert (found["origin"], found["substituter"], found["level"]) == ("substituted", url, level)
    no_traceback(stats, verified, shown, damaged)


def test_stats_of_an_empty_or_missing_root_shows_no_origins(tmp_path):
    env = user_env(tmp_path / "home")
    stats = cli(env, "stats")
    assert stats.returncode == 0, stats.stderr
    assert "origins" not in stats.stdout
    assert json.loads(cli(env, "stats", "--json").stdout)["origins"] == []


# --- doctor's substituter check ------------------------------------------------------------------


def doctor(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, Any]]]:
    """doctor's text, and its substituter checks by URL (from --json)."""
    text = cli(env, "doctor", *args)
    found = json.loads(cli(env, "doctor", "--json", *args).stdout)
    no_traceback(text)
    return text, {item["path"]: item for item in found if "check" in item}


def state_files(root: Path) -> dict[str, bytes]:
    state = root / "substituters"
    return {str(p.relative_to(state)): p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file()}


def lines_about(text: str, url: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("info:", "warning:", "danger:")) and url in line]


def test_doctor_sees_a_rollback_relative_to_what_this_root_already_trusts(tree, caddy, tmp_path):
    served = copy_tree(tree, caddy.root / "rollback")
    url = f"{caddy.url}/rollback"
    old_metadata = tmp_path / "old-metadata"
    shutil.copytree(served / "metadata", old_metadata)  # the tree as it was (timestamp v1 ...)
    publish(served, signing_key=str(tree["key"]))  # re-signed: timestamp, snapshot v2
    root = tmp_path / "root"
    env = substituted_env(tmp_path / "home", url, tree, WASMCACHE_SUBSTITUTER_CA=str(caddy.ca_file))
    ran = cli(env, "run", "--cache-dir", str(root), "--invoke", "answer", str(tree["wasm"]))
    assert (ran.returncode, ran.stdout) == (0, "73\n"), ran.stderr  # the consumer now trusts v2
    trusted = state_files(root)
    assert trusted

    # The host serves the older tree again (a mirror rolled back, or an attacker replaying it).
    shutil.rmtree(served / "metadata")
    shutil.copytree(old_metadata, served / "metadata")
    text, checks = doctor(env, "--cache-dir", str(root))
    (line,) = lines_about(text.stdout, url)
    assert line.startswith("warning:"), text.stdout
    assert "ROLLBACK" in line, text.stdout
    assert checks[url]["check"]["rolled_back"] is True
    assert checks[url]["check"]["reachable"] is True
    assert state_files(root) == trusted  # doctor wrote nothing into the consumer's state

    # The control: checked from a fresh temporary state (the naive doctor), the old tree looks fine.
    text, checks = doctor(env, "--cache-dir", str(tmp_path / "fresh-root"))
    (line,) = lines_about(text.stdout, url)
    assert line.startswith("info:"), line
    assert "no rollback check" in line, line
    assert checks[url]["check"]["rolled_back"] is False


def test_doctor_never_advances_the_consumers_trusted_metadata(tree, tmp_path):
    served = copy_tree(tree, tmp_path / "served")
    url = f"file://{served}"
    env = substituted_env(tmp_path / "home", url, tree)
    root = tmp_path / "root"
    ran = cli(env, "run", "--cache-dir", str(root), "--invoke", "answer", str(tree["wasm"]))
    assert ran.returncode == 0, ran.stderr
    trusted = state_files(root)
    publish(served, signing_key=str(tree["key"]))  # the host moves on: v2
    os.chmod(root / "substituters", 0o500)  # and the consumer's state is read-only
    try:
        text, checks = doctor(env, "--cache-dir", str(root))
    finally:
        os.chmod(root / "substituters", 0o700)
    (line,) = lines_about(text.stdout, url)
    assert line.startswith("info:"), line
    assert "root v1 valid, reachable" in line, line
    assert "no rollback," in line, line
    assert "1 artifact(s)" not in line  # every level of the one module
    check = checks[url]["check"]
    assert check["ok"]
    assert check["root_valid"]
    assert not check["rolled_back"]
    assert 29 <= check["days_left"] <= 30
    assert check["fitting"] is not None
    assert 1 <= check["fitting"] <= check["artifacts"]
    assert f"{check['fitting']} of them fit this host" in line
    assert state_files(root) == trusted  # still v1: the check refreshed a copy


def test_doctor_says_expired_metadata_in_one_line(tree, tmp_path):
    from tuf.api.metadata import Metadata
    from tuf.api.serialization.json import JSONSerializer

    served = copy_tree(tree, tmp_path / "served")
    path = served / "metadata" / "timestamp.json"
    timestamp = Metadata.from_bytes(path.read_bytes())
    timestamp.signed.expires = timestamp.signed.expires.replace(year=2020)  # a frozen host's old answer
    timestamp.signatures.clear()
    timestamp.sign(load_signer(str(tree["key"])))
    path.write_bytes(timestamp.to_bytes(JSONSerializer()))
    url = f"file://{served}"
    text, checks = doctor(substituted_env(tmp_path / "home", url, tree), "--cache-dir", str(tmp_path / "root"))
    (line,) = lines_about(text.stdout, url)
    assert line.startswith("warning:"), line
    assert "reachable, root valid, expired metadata" in line, line
    check = checks[url]["check"]
    assert (check["ok"], check["reachable"], check["expired"], check["rolled_back"]) == (False, True, True, False)
    assert "re-sign" in text.stdout


def test_doctor_says_unreachable_hosts_and_missing_trees_in_one_line_each(tree, caddy, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    empty = f"{caddy.url}/nothing-here"
    env = user_env(tmp_path / "home", WASMCACHE_SUBSTITUTERS=f"{dead} {empty}",
                   WASMCACHE_SUBSTITUTER_ROOTS=str(tree["root"]), WASMCACHE_SUBSTITUTER_CA=str(caddy.ca_file))
    text, checks = doctor(env)
    (line,) = lines_about(text.stdout, dead)
    assert line.startswith("warning:"), line
    assert "unreachable" in line, line
    assert checks[dead]["check"]["reachable"] is False
    (line,) = lines_about(text.stdout, empty)
    assert line.startswith("warning:"), line
    assert "reachable, but no tree there" in line, line
    assert checks[empty]["check"]["reachable"] is True
    assert text.returncode == 0  # a dead substituter costs a compile, not a failing doctor
    assert text.stderr == ""


def test_check_substituters_with_a_root_signed_by_another_key_says_untrusted(tree, tmp_path):
    other = tmp_path / "other"
    key, _, _ = write_keypair(tmp_path / "other-keys")
    publish(other, compile_at_levels(str(tree["wasm"]), None, ["baseline"]), signing_key=str(key))
    from wasmcache._public import resolve_substituter_settings

    settings = resolve_substituter_settings([f"file://{other}"], [str(tree["root"])], declared=False)
    assert settings is not None
    (check,) = _client.check_substituters(settings)
    assert (check.ok, check.reachable, check.root_valid) == (False, True, False)
    assert "untrusted" in check.detail
