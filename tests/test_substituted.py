"""A cache miss filled by a substituter: a publisher's signed, precompiled artifact instead of a compile.

Real Caddy over HTTPS on 127.0.0.1 (a test CA the consumer is told to trust), real `wasmcache publish`
trees, fresh processes. After the first start the entry is a plain local hit: the substituter may be
gone. Any failure of the substituter ends in a local compile, one warning at most, nothing partial.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
import wasmtime

from caddy_server import caddy_fixture, free_port  # noqa: F401 - the `caddy` fixture
from conftest import declaring_site, published_tree, remount_read_only, run_json
from wasmcache._public import _client
from wasmcache._public._build import compile_at_levels
from wasmcache._public._publish import publish
from wasmcache.cli._remote import write_keypair

if TYPE_CHECKING:
    from pathlib import Path

WAT = '(module (func (export "answer") (result i32) i32.const 73))'

# A fresh process: load through a ModuleCache with the substituters of the environment (or none).
LOAD = """
import json, logging, sys, wasmtime, wasmcache
records = []
class Keep(logging.Handler):
    def emit(self, record): records.append((record.levelname, record.getMessage()))
logging.getLogger("wasmcache").addHandler(Keep())
logging.getLogger("wasmcache").setLevel(logging.INFO)
cache = wasmcache.ModuleCache(sys.argv[1])
module = cache.load(sys.argv[2])
store = wasmtime.Store(cache.engine)
answer = wasmtime.Instance(store, module, []).exports(store)["answer"](store)
stats = cache.stats()
print(json.dumps({"answer": answer, "compiles": stats.compiles, "hits": stats.hits,
                  "substituted": stats.substituted, "log": records}))
"""


@pytest.fixture(autouse=True)
def _fresh_client() -> None:
    _client.forget()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    _key, wasm, published = published_tree(tmp_path_factory.mktemp("substituted"), WAT)
    return {"wasm": wasm, "tree": published, "root": published / "root.json"}


def served(tree: dict[str, Path], caddy: Any, name: str) -> str:
    shutil.copytree(tree["tree"], caddy.root / name)
    return f"{caddy.url}/{name}"


def environment(url: str | None, tree: dict[str, Path], caddy: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASMCACHE_")}
    if url is not None:
        env.update(WASMCACHE_SUBSTITUTERS=url, WASMCACHE_SUBSTITUTER_ROOTS=str(tree["root"]),
                   WASMCACHE_SUBSTITUTER_CA=str(caddy.ca_file))
    return env


def records(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in root.glob("ns-*/*.rec")]


def test_a_first_start_loads_the_publishers_artifact_and_later_starts_need_no_substituter(tree, caddy, tmp_path):
    url = served(tree, caddy, "first")
    root = tmp_path / "root"
    first = run_json(LOAD, str(root), str(tree["wasm"]), env=environment(url, tree, caddy))
    assert (first["answer"], first["compiles"], first["substituted"]) == (73, 0, 1)
    (record,) = records(root)
    assert record["origin"] == "substituted"
    assert record["substituter"] == url
    assert record["level"]
    # The substituter is gone: a plain local hit, no network, nothing said.
    shutil.rmtree(caddy.root / "first")
    again = run_json(LOAD, str(root), str(tree["wasm"]), env=environment(url, tree, caddy))
    assert (again["answer"], again["compiles"], again["hits"], again["substituted"]) == (73, 0, 1, 0)
    assert not [line for line in again["log"] if line[0] == "WARNING"]


def test_without_a_substituter_the_same_first_start_compiles(tree, caddy, tmp_path):
    # The control: the same fresh root and module, nothing configured.
    first = run_json(LOAD, str(tmp_path / "root"), str(tree["wasm"]), env=environment(None, tree, caddy))
    assert (first["answer"], first["compiles"], first["substituted"]) == (73, 1, 0)


def test_a_substituted_entry_checks_out_in_full_and_after_a_copy(tree, caddy, tmp_path):
    import wasmcache

    url = served(tree, caddy, "verify")
    root = tmp_path / "root"
    run_json(LOAD, str(root), str(tree["wasm"]), env=environment(url, tree, caddy))
    report = wasmcache.ModuleCache(root).verify()
    assert report.ok, report.findings
    assert report.intact == 1
    # A copied root: the entry's identity changed, so the next load checks it in full (content and
    # engine section, which for a substitute may differ from the host's in CPU features only).
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    again = run_json(LOAD, str(copy), str(tree["wasm"]), env=environment(None, tree, caddy))
    assert (again["answer"], again["compiles"], again["hits"]) == (73, 0, 1)
    assert not [line for line in again["log"] if line[0] == "WARNING"]


@pytest.mark.parametrize("broken", ["dead host", "404", "untrusted root"])
def test_a_broken_substituter_costs_a_local_compile_one_warning_and_leaves_nothing(tree, caddy, tmp_path, broken):
    env = environment(served(tree, caddy, f"broken-{broken.replace(' ', '-')}"), tree, caddy)
    if broken == "dead host":
        env["WASMCACHE_SUBSTITUTERS"] = f"http://127.0.0.1:{free_port()}/nothing"
    elif broken == "404":
        env["WASMCACHE_SUBSTITUTERS"] = f"{caddy.url}/no-such-tree"
    else:
        other = tmp_path / "other"
        key, _, _ = write_keypair(tmp_path / "other-keys")
        publish(other, compile_at_levels(str(tree["wasm"]), None, None), signing_key=str(key))
        env["WASMCACHE_SUBSTITUTER_ROOTS"] = str(other / "root.json")  # a root that signed none of this
    root = tmp_path / "root"
    first = run_json(LOAD, str(root), str(tree["wasm"]), env=env)
    assert (first["answer"], first["compiles"], first["substituted"]) == (73, 1, 0)
    assert len([line for line in first["log"] if line[0] == "WARNING"]) <= 1, first["log"]
    assert not list(root.glob("ns-*/*.tmp"))
    assert [r["origin"] for r in records(root)] == ["compiled"]


def test_an_unchanged_program_under_exec_gets_the_substitute(tree, caddy, tmp_path):
    url = served(tree, caddy, "exec")
    program = tmp_path / "tool.py"
    program.write_text("import sys, wasmtime\n"
                       "engine = wasmtime.Engine()\n"
                       "module = wasmtime.Module(engine, open(sys.argv[1], 'rb').read())\n"
                       "store = wasmtime.Store(engine)\n"
                       "print(wasmtime.Instance(store, module, []).exports(store)['answer'](store))\n")
    root = tmp_path / "root"
    env = {**environment(url, tree, caddy), "WASMCACHE_DIR": str(root)}
    proc = subprocess.run([sys.executable, "-m", "wasmcache.cli", "exec", sys.executable, str(program),
                           str(tree["wasm"])], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "73\n"
    assert proc.stderr == ""  # not a terminal: nothing said
    assert [r["origin"] for r in records(root)] == ["substituted"]


def test_the_cli_takes_substituters_as_options_and_shows_where_entries_came_from(tree, caddy, tmp_path):
    url = served(tree, caddy, "cli")
    root = tmp_path / "root"
    env = {**environment(None, tree, caddy), "WASMCACHE_SUBSTITUTER_CA": str(caddy.ca_file)}
    options = ["--substituter", url, "--substituter-root", str(tree["root"])]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "wasmcache.cli", "--cache-dir", str(root), *args],
                              capture_output=True, text=True, env=env, timeout=120, check=False)

    ran = cli("run", *options, "--invoke", "answer", str(tree["wasm"]))
    assert (ran.returncode, ran.stdout) == (0, "73\n"), ran.stderr
    listed = cli("ls")
    assert "substituted x86-64" in listed.stdout or "substituted baseline" in listed.stdout, listed.stdout
    (info,) = json.loads(cli("ls", "--json").stdout)
    assert (info["origin"], info["substituter"]) == ("substituted", url)
    # compile --native replaces the substitute with this host's own compile, and asks nobody.
    native = cli("compile", "--native", *options, str(tree["wasm"]))
    assert native.returncode == 0, native.stderr
    assert "compiled" in native.stderr
    (info,) = json.loads(cli("ls", "--json").stdout)
    assert (info["origin"], info["level"]) == ("compiled", None)
    # doctor checks each configured substituter (here: from the environment).
    env.update(WASMCACHE_SUBSTITUTERS=url, WASMCACHE_SUBSTITUTER_ROOTS=str(tree["root"]))
    doctor = cli("doctor")
    assert f"{url}: substituter (environment): root v1" in doctor.stdout, doctor.stdout
    # pull warms a fresh root from a substituter alone.
    root = tmp_path / "pulled"
    pulled = cli("pull", str(tree["wasm"]))
    assert pulled.returncode == 0, pulled.stderr
    assert "substituted" in pulled.stdout + pulled.stderr


def test_a_substituted_record_admits_cpu_levels_only_never_other_engine_settings(tmp_path):
    # An artifact wasmtime itself would accept in this engine (opt-level is not among the flags it checks)
    # but compiled by other engine settings, under a record claiming it was substituted: the full check
    # refuses it (its section differs in more than CPU features), and the module is compiled here.
    import blake3

    import wasmcache
    from wasmcache._core import Record, write_record

    wasm = wasmtime.wat2wasm(WAT)
    cache = wasmcache.ModuleCache(tmp_path / "root", engine=wasmcache.EngineSettings(opt_level="0"))
    cache.load(wasm)
    key = cache.key_for(wasm)
    entry = cache.entry_path(key)
    other = wasmtime.Module(wasmtime.Engine(), wasm).serialize()  # opt-level "speed": wasmtime accepts it here
    entry.unlink()
    entry.write_bytes(other)
    entry.chmod(0o444)
    record_path = entry.with_suffix(".rec")
    record = json.loads(record_path.read_text())
    forged = Record(key=key, kind="module", wasm_digest=record["wasm_digest"],
                    content_digest=blake3.blake3(other).hexdigest(), size=len(other), identity=None,
                    source="answer.wasm", wasmtime_version=record["wasmtime_version"], created=record["created"],
                    origin="substituted", substituter="https://example.invalid/tree", level="x86-64-v3")
    write_record(record_path, forged)
    report = wasmcache.ModuleCache(tmp_path / "root", engine=wasmcache.EngineSettings(opt_level="0")).verify()
    assert [f.problem for f in report.findings] == ["mismatched"]
    run = run_json("""
import json, sys, wasmcache
from wasmgen import call_answer
cache = wasmcache.ModuleCache(sys.argv[1], engine=wasmcache.EngineSettings(opt_level="0"))
module = cache.load(bytes.fromhex(sys.argv[2]))
print(json.dumps({"compiles": cache.stats().compiles, "hits": cache.stats().hits}))
""", str(tmp_path / "root"), wasm.hex())
    assert (run["compiles"], run["hits"]) == (1, 0)


def test_compile_says_a_module_was_substituted_and_pull_exits_1_on_a_tampered_artifact(tree, caddy, tmp_path):
    url = served(tree, caddy, "say")
    env = environment(url, tree, caddy)
    compiled = subprocess.run([sys.executable, "-m", "wasmcache.cli", "compile", "--json", "--cache-dir",
                               str(tmp_path / "a"), str(tree["wasm"])], capture_output=True, text=True, env=env,
                              timeout=120, check=False)
    assert compiled.returncode == 0, compiled.stderr
    said = json.loads(compiled.stdout)
    assert (said["substituted"], said["compiled"]) == (True, False)
    # The trusted state directory is as private as the rest of the root.
    assert (tmp_path / "a" / "substituters").stat().st_mode & 0o777 == 0o700
    for artifact in (caddy.root / "say" / "targets").iterdir():
        data = bytearray(artifact.read_bytes())
        data[len(data) // 2] ^= 0xFF
        artifact.write_bytes(bytes(data))
    pulled = subprocess.run([sys.executable, "-m", "wasmcache.cli", "pull", "--cache-dir", str(tmp_path / "b"),
                             str(tree["wasm"])], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert pulled.returncode == 1, pulled.stdout + pulled.stderr  # compiled locally, but someone is tampering
    assert "untrusted" in pulled.stderr


def run_on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], bytes]:
    """`wasmcache ARGS` with its stderr on a real pseudo-terminal: (the process, what the terminal showed)."""
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "wasmcache.cli", *args], stdout=subprocess.PIPE,
                              stderr=follower, text=True, env=env, timeout=120, check=False)
        os.close(follower)
        follower = -1
        said = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            said += chunk
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    return proc, said


def test_a_terminal_sees_one_line_for_a_download(tree, caddy, tmp_path):
    url = served(tree, caddy, "tty")
    proc, said = run_on_a_terminal(["run", "--cache-dir", str(tmp_path / "r"), "--invoke", "answer",
                                    str(tree["wasm"])], environment(url, tree, caddy))
    assert proc.returncode == 0
    assert proc.stdout == "73\n"
    lines = said.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("wasmcache: fetching precompiled answer.wasm, ")


def test_doctor_names_a_local_entry_its_publisher_revoked(tree, caddy, tmp_path):
    url = served(tree, caddy, "revoke")
    root = tmp_path / "root"
    env = environment(url, tree, caddy)
    run_json(LOAD, str(root), str(tree["wasm"]), env=env)
    (record,) = records(root)
    key = next((tree["tree"].parent / "keys").glob("*.pem"))
    revoked = subprocess.run([sys.executable, "-m", "wasmcache.cli", "publish", "--out", str(caddy.root / "revoke"),
                              "--signing-key", str(key), "--revoke", f"level={record['level']}"],
                             capture_output=True, text=True, env=env, timeout=120, check=False)
    assert revoked.returncode == 0, revoked.stderr
    doctor = subprocess.run([sys.executable, "-m", "wasmcache.cli", "doctor", "--cache-dir", str(root)],
                            capture_output=True, text=True, env=env, timeout=120, check=False)
    assert doctor.returncode == 1, doctor.stdout
    assert "its publisher revoked this precompiled module" in doctor.stdout
    assert "wasmcache compile --native answer.wasm" in doctor.stdout


def test_a_programs_copy_of_a_substituted_entry_is_stored_once(tree, caddy, tmp_path):
    """YoWASP's second start: it wrote the substituted module's bytes into its own file, which the drop-in
    snapshots into the namespace of the artifact's own section (the host engine's namespace holds the
    substituted entry when the two sections differ in CPU features). The snapshot becomes a second name of
    the entry's inode, wherever it lives, instead of a second copy of a module that can be 220 MB."""
    url = served(tree, caddy, "shared")
    root = tmp_path / "root"
    first = run_json(LOAD, str(root), str(tree["wasm"]), env=environment(url, tree, caddy))
    assert first["substituted"] == 1
    (entry,) = root.glob("ns-*/*.cwasm")
    own = tmp_path / "own cache" / "answer.cwasm"
    own.parent.mkdir()
    own.write_bytes(entry.read_bytes())
    code = ("import sys, wasmcache; c = wasmcache.ModuleCache(sys.argv[1]); c.load_precompiled(sys.argv[2]); "
            "print(c.stats().compiles)")
    out = subprocess.run([sys.executable, "-c", code, str(root), str(own)], capture_output=True, text=True,
                         env=environment(None, tree, caddy), check=True, timeout=120).stdout
    assert out.strip() == "0"
    entries = sorted(root.glob("ns-*/*.cwasm"))
    assert len(entries) == 2
    first_stat, second_stat = (e.stat() for e in entries)
    assert first_stat.st_ino == second_stat.st_ino
    assert first_stat.st_nlink == 2
    verify = subprocess.run([sys.executable, "-m", "wasmcache.cli", "verify", "--cache-dir", str(root)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    stats = json.loads(subprocess.run([sys.executable, "-m", "wasmcache.cli", "stats", "--json", "--cache-dir",
                                       str(root)], capture_output=True, text=True, timeout=60, check=True).stdout)
    assert stats["size_bytes"] < 2 * first_stat.st_size


@pytest.fixture
def read_only_root(tmpfs: Path) -> Path:
    """A cache root on a real read-only filesystem (a tmpfs remounted read-only), existing and empty."""
    (tmpfs / "cache").mkdir()
    remount_read_only(tmpfs)
    return tmpfs / "cache"


def test_a_read_only_root_gets_the_substitute_in_memory_and_stores_nothing(tree, caddy, tmp_path, read_only_root):
    url = served(tree, caddy, "read-only")
    first = run_json(LOAD, str(read_only_root), str(tree["wasm"]), env=environment(url, tree, caddy))
    assert (first["answer"], first["compiles"], first["substituted"]) == (73, 0, 1)
    warnings = [line[1] for line in first["log"] if line[0] == "WARNING"]
    assert len(warnings) == 1
    assert "Read-only file system" in warnings[0]  # the root's one line, as for any read-only root
    assert list(read_only_root.iterdir()) == []
    # The control: the same read-only root without a substituter compiles.
    control = run_json(LOAD, str(read_only_root), str(tree["wasm"]), env=environment(None, tree, caddy))
    assert (control["answer"], control["compiles"], control["substituted"]) == (73, 1, 0)
    # A tampered artifact is refused as on any root: a compile, and nothing reaches wasmtime.
    served_tree = caddy.root / "read-only"
    for artifact in served_tree.rglob("*.zst"):
        data = bytearray(artifact.read_bytes())
        data[len(data) // 2] ^= 0xFF
        artifact.write_bytes(bytes(data))
    tampered = run_json(LOAD, str(read_only_root), str(tree["wasm"]), env=environment(url, tree, caddy))
    assert (tampered["answer"], tampered["compiles"], tampered["substituted"]) == (73, 1, 0)


def test_a_terminal_sees_why_a_long_compile_had_no_substitute_once(tree, caddy, tmp_path):
    """A dead substituter and a large module: the warning says why, and the compile's line does not repeat it."""
    big = tmp_path / "big.wasm"
    big.write_bytes(wasmtime.wat2wasm('(module (memory 80) (data (i32.const 0) "' + "a" * (5 << 20) + '") '
                                      '(func (export "answer") (result i32) i32.const 73))'))
    dead = f"http://127.0.0.1:{free_port()}/tree"
    proc, said = run_on_a_terminal(["run", "--cache-dir", str(tmp_path / "r"), "--invoke", "answer", str(big)],
                                   environment(dead, tree, caddy))
    assert (proc.returncode, proc.stdout) == (0, "73\n")
    lines = said.decode().splitlines()
    assert len(lines) == 3, lines  # why, the compile's start, its end
    assert "connection refused" in lines[0], lines
    assert lines[1] == "wasmcache: compiling big.wasm (5 MB)", lines
    assert lines[2].startswith("wasmcache: compiled "), lines


def test_a_guest_names_each_failing_substituter_and_each_broken_declaration_once(tree, tmp_path):
    """Under exec a warning is said once per cause: for substituters the cause is the host (or the tool's
    declaration), not the sentence's template, so a second dead host is not silenced by the first."""
    site = declaring_site(tmp_path / "site", {"one": "decl_one:S", "two": "decl_two:S"},
                          {"decl_one": "S = {'url': 'file:///srv/tree'}\n", "decl_two": "S = 'file:///srv/tree'\n"})
    dead = [f"http://127.0.0.1:{free_port()}/tree" for _ in range(2)]
    program = tmp_path / "prog.py"
    program.write_text("import sys, wasmtime\ne = wasmtime.Engine()\n"
                       "for path in sys.argv[1:]:\n    wasmtime.Module.from_file(e, path)\nprint('ok')\n")
    other = tmp_path / "other.wat"
    other.write_text('(module (func (export "answer") (result i32) i32.const 74))')
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASMCACHE_")} | {
        "PYTHONPATH": str(site), "WASMCACHE_SUBSTITUTERS": " ".join(dead),
        "WASMCACHE_SUBSTITUTER_ROOTS": str(tree["root"])}
    proc = subprocess.run([sys.executable, "-m", "wasmcache.cli", "--cache-dir", str(tmp_path / "root"), "exec",
                           sys.executable, str(program), str(tree["wasm"]), str(other)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert (proc.returncode, proc.stdout) == (0, "ok\n"), proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 4, proc.stderr  # two hosts, two declarations: each once, for two modules
    for needle in (*dead, "entry point one", "entry point two"):
        assert sum(needle in line for line in lines) == 1, proc.stderr
