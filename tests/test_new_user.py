"""What a new user meets first, on a machine where nothing was set up (issue 8, items 1-9).

Each test runs in fresh processes whose HOME is new and which have no XDG_* or WASMCACHE_*
variables: the real default-root resolution, not the suite's XDG_CACHE_HOME.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli
from wasmgen import answer_module, wasi_program

_SCRUBBED = ("XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "WASMCACHE_DIR", "WASMCACHE_DISABLE",
             "WASMCACHE_MAX_SIZE", "WASMCACHE_AUTO", "WASMCACHE_REMOTE", "WASMTIME_BACKTRACE_DETAILS")


def fresh_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_fresh(code: str, home: Path, *, cwd: Path | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=fresh_env(home, **extra), cwd=cwd, timeout=120, check=False)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


def test_building_settings_before_the_first_cache_leaves_the_default_root_usable(home: Path, tmp_path: Path) -> None:
    (tmp_path / "f.wasm").write_bytes(answer_module(7))
    code = """
        import wasmcache
        wasmcache.EngineSettings(compiler="winch").build()
        cache = wasmcache.ModuleCache()
        cache.load("f.wasm")
        print(cache.root)
    """
    for _ in range(2):
        proc = run_fresh(code, home, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    root = Path(proc.stdout.strip())
    assert root == home / ".cache" / "wasmcache"
    doctor = run_cli("doctor", env=fresh_env(home))
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr


def test_settings_built_without_a_cache_write_nothing(home: Path) -> None:
    proc = run_fresh('import wasmcache; wasmcache.EngineSettings(opt_level="0").build(); print("ok")', home)
    assert proc.stdout.strip() == "ok", proc.stderr
    assert files_under(home) == []


def test_disabled_touches_nothing_anywhere(home: Path, tmp_path: Path) -> None:
    (tmp_path / "f.wasm").write_bytes(wasi_program())
    code = """
        import wasmcache
        for settings in (None, wasmcache.EngineSettings(compiler="winch")):
            cache = wasmcache.ModuleCache(engine=settings)
            cache.load("f.wasm"); cache.load("f.wasm")
            assert cache.stats().compiles == 2, cache.stats()
        print("ok")
    """
    proc = run_fresh(code, home, cwd=tmp_path, WASMCACHE_DISABLE="1")
    assert proc.stdout.strip() == "ok", proc.stderr
    cli = run_cli("run", "-C", "compiler=winch", "--invoke", "add", str(tmp_path / "f.wasm"), "40", "2",
                  env=fresh_env(home, WASMCACHE_DISABLE="1"))
    assert cli.stdout.strip() == "42", cli.stderr
    assert files_under(home) == []


def test_a_read_only_root_writes_no_memo_anywhere_else(home: Path, tmp_path: Path) -> None:
    root = tmp_path / "ro"
    (tmp_path / "f.wasm").write_bytes(answer_module(3))
    warm = run_fresh(f"import wasmcache; wasmcache.ModuleCache({str(root)!r}).load('f.wasm')", home, cwd=tmp_path)
    assert warm.returncode == 0, warm.stderr
    subprocess.run(["chattr", "-R", "+i", str(root)], check=True)
    try:
        code = f"""
            import wasmcache
            cache = wasmcache.ModuleCache({str(root)!r}, engine=wasmcache.EngineSettings(opt_level="0"))
            cache.load("f.wasm")
            print(cache.writable)
        """
        proc = run_fresh(code, home, cwd=tmp_path)
    finally:
        subprocess.run(["chattr", "-R", "-i", str(root)], check=True)
    assert proc.stdout.strip() == "False", proc.stderr
    assert files_under(home) == []


def test_a_relative_root_is_resolved_once(home: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "f.wasm").write_bytes(answer_module(4))
    code = f"""
        import os, wasmcache
        cache = wasmcache.ModuleCache("relroot")
        os.chdir({str(tmp_path / "b")!r})
        cache.load({str(tmp_path / "f.wasm")!r})
        print(cache.root)
    """
    proc = run_fresh(code, home, cwd=tmp_path / "a")
    assert proc.stdout.strip() == str(tmp_path / "a" / "relroot"), proc.stderr
    assert not (tmp_path / "b" / "relroot").exists()
    stats = json.loads(subprocess.run([sys.executable, "-m", "wasmcache.cli", "stats", "--json", "--cache-dir",
                                       "relroot"], cwd=tmp_path / "a", capture_output=True, text=True,
                                      env=fresh_env(home), check=True).stdout)
    assert stats["root"] == str(tmp_path / "a" / "relroot")
    assert stats["entries"] == 1


def test_the_engine_memo_is_keyed_by_the_environment_that_changes_the_engine(home: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    code = f"""
        import json, wasmtime, wasmcache
        cache = wasmcache.ModuleCache({str(root)!r})
        print(json.dumps([cache.engine_identity.fingerprint, wasmcache.engine_fingerprint(wasmtime.Engine())]))
    """
    plain = json.loads(run_fresh(code, home).stdout)
    detailed = json.loads(run_fresh(code, home, WASMTIME_BACKTRACE_DETAILS="1").stdout)
    again = json.loads(run_fresh(code, home, WASMTIME_BACKTRACE_DETAILS="1").stdout)  # from the memo now
    assert plain[0] == plain[1]
    assert detailed[0] == detailed[1] == again[0]
    assert plain[0] != detailed[0]


def test_settings_that_cannot_compile_a_function_are_refused_when_built(home: Path) -> None:
    code = """
        import wasmcache
        try:
            wasmcache.EngineSettings(compiler="winch", features={"exceptions": True}).build()
        except wasmcache.ConfigError as exc:
            print("refused:", exc)
    """
    proc = run_fresh(code, home)
    assert proc.stdout.startswith("refused:"), proc.stderr
    assert "compiler=winch" in proc.stdout
    assert "exceptions=y" in proc.stdout


def test_the_readme_engine_example_works(home: Path, tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("settings = wasmcache.EngineSettings(")
    example = readme[start: readme.index("cache = wasmcache.ModuleCache(engine=settings)", start)]
    (tmp_path / "f.wasm").write_bytes(answer_module(11))
    code = f"""
        import wasmcache
        from wasmgen import call_answer
        {textwrap.indent(textwrap.dedent(example), "        ").strip()}
        cache = wasmcache.ModuleCache({str(tmp_path / "cache")!r}, engine=settings)
        store_answer = call_answer(cache.engine, cache.load("f.wasm"))
        print(store_answer)
    """
    proc = run_fresh(code, home, cwd=tmp_path)
    assert proc.stdout.strip() == "11", proc.stderr


def test_doctor_pid_calls_a_first_run_intact(home: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    code = f"""
        import sys, time, wasmcache
        from wasmgen import answer_module, call_answer
        cache = wasmcache.ModuleCache({str(root)!r})
        module = cache.load(answer_module(21))  # compiles, publishes, then maps: every first run
        assert call_answer(cache.engine, module) == 21
        print("ready", flush=True)
        sys.stdin.readline()
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=fresh_env(home))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        doctor = run_cli("doctor", "--pid", str(proc.pid), "--json", env=fresh_env(home))
    finally:
        proc.communicate("\n", timeout=30)
    mapped = json.loads(doctor.stdout)
    assert [m["state"] for m in mapped] == ["intact"], mapped
    assert doctor.returncode == 0


def test_two_roots_with_one_engine_each_receive_their_entry(tmp_path: Path) -> None:
    import wasmcache

    first = wasmcache.ModuleCache(tmp_path / "one")
    second = wasmcache.ModuleCache(tmp_path / "two", engine=first.engine)
    held = first.load(answer_module(12))  # alive: the per-process memo knows it
    assert second.load(answer_module(12)) is not held
    assert second.stats().entries == 1
    assert len(list((tmp_path / "two").rglob("*.cwasm"))) == 1


def test_memory_mode_never_returns_a_mapped_module(tmp_path: Path) -> None:
    import wasmcache

    mapped = wasmcache.ModuleCache(tmp_path / "c")
    held = mapped.load(answer_module(13))
    memory = wasmcache.ModuleCache(tmp_path / "c", engine=mapped.engine, mode="memory")
    copy = memory.load(answer_module(13))
    assert copy is not held
    assert memory.stats().hits == 1  # read from the entry, deserialized as a copy
    assert memory.load(answer_module(13)) is copy


def test_size_accounting_runs_after_the_key_lock_is_released(tmp_path: Path) -> None:
    code = f"""
        import json, wasmcache, wasmcache._maintenance as m
        from wasmcache._core import lock_path
        from wasmcache._lock import try_lock
        from wasmgen import answer_module
        seen = []
        real = m.account_publication
        def observed(root, size, max_size):
            with try_lock(lock_path(cache.namespace_dir, key)) as free:
                seen.append(free)
            return real(root, size, max_size)
        m.account_publication = observed
        cache = wasmcache.ModuleCache({str(tmp_path / "c")!r})
        key = cache.key_for(answer_module(14))
        cache.load(answer_module(14))
        print(json.dumps(seen))
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=fresh_env(tmp_path), timeout=120, check=False)
    assert json.loads(proc.stdout) == [True], proc.stderr


def test_verify_fix_leaves_an_entry_whose_key_is_locked(tmp_path: Path) -> None:
    import wasmcache
    from wasmcache._core import lock_path
    from wasmcache._lock import KeyLock

    cache = wasmcache.ModuleCache(tmp_path / "c")
    cache.load(answer_module(15))
    key = cache.key_for(answer_module(15))
    entry = cache.entry_path(key)
    os.chmod(entry, 0o644)
    with open(entry, "r+b") as f:  # rewritten in place: corrupt
        f.seek(100)
        f.write(b"\xff" * 64)
    holder = KeyLock(lock_path(cache.namespace_dir, key))
    assert holder.acquire(blocking=False)
    try:
        report = cache.verify(fix=True)
        assert [f.problem for f in report.findings] == ["corrupt"]
        assert report.fixed == 0
        assert entry.exists()  # whoever holds the key is handling it
    finally:
        holder.release()
    report = cache.verify(fix=True)
    assert report.fixed == 1
    assert not entry.exists()


def test_an_entry_wasmtime_refuses_costs_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import blake3

    import wasmcache
    from wasmcache._core import Identity, read_record, record_path, write_record

    cache = wasmcache.ModuleCache(tmp_path / "c")
    cache.load(answer_module(16))
    key = cache.key_for(answer_module(16))
    entry = cache.entry_path(key)
    from wasmcache._elf import ENGINE_SECTION, find_section

    data = bytearray(entry.read_bytes())
    offset = data.find(find_section(bytes(data), ENGINE_SECTION))
    data[offset + 2] ^= 0x01  # the wasmtime version in the engine section: wasmtime refuses the file
    entry.unlink()
    entry.write_bytes(bytes(data))
    found = read_record(record_path(cache.namespace_dir, key))
    assert found is not None
    write_record(record_path(cache.namespace_dir, key), found[0]._replace(  # it vouches for the bad file
        content_digest=blake3.blake3(bytes(data)).hexdigest(), identity=Identity.of(entry.stat())))
    other = wasmcache.ModuleCache(tmp_path / "c")  # a new engine object: no in-process module
    with caplog.at_level(logging.WARNING, logger="wasmcache"):
        other.load(answer_module(16))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "bad cache entry" in warnings[0]
    assert "wasmtime refused" in warnings[0]


def test_stats_reads_the_usage_record_without_scanning(tmp_path: Path) -> None:
    code = f"""
        import json, os, wasmcache
        from wasmgen import answer_module
        cache = wasmcache.ModuleCache({str(tmp_path / "c")!r})
        for i in range(5):
            cache.load(answer_module(100 + i))
        calls = []
        real = os.scandir
        os.scandir = lambda *a: calls.append(a) or real(*a)
        stats = cache.stats()
        os.scandir = real
        print(json.dumps([stats.entries, stats.size_bytes > 0, len(calls), cache.gc().entries]))
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=fresh_env(tmp_path), timeout=120, check=False)
    assert json.loads(proc.stdout) == [5, True, 0, 5], proc.stderr


UPLOAD_OBSERVED = """
import json, sys, wasmcache
from wasmcache._core import lock_path
from wasmcache._lock import try_lock
from wasmcache._remote import _tier
from wasmgen import answer_module

spec = json.loads(sys.argv[1])
seen = []
real = _tier.RemoteTier.upload
def observed(self, key, fingerprint, data):
    with try_lock(lock_path(cache.namespace_dir, key)) as free:
        seen.append(free)
    return real(self, key, fingerprint, data)
_tier.RemoteTier.upload = observed
cache = wasmcache.ModuleCache(spec["root"], remote=spec["url"], signing_key=spec["private"],
                              trusted_keys=[spec["public"]])
cache.load(answer_module(17))
print(json.dumps({"seen": seen, "uploads": cache.stats().uploads}))
"""


@pytest.mark.s3
def test_the_upload_runs_after_the_key_lock_is_released(s3_bucket: tuple[object, str], tmp_path: Path) -> None:
    from wasmcache.cli._remote import write_keypair

    server, bucket = s3_bucket
    private, public, _ = write_keypair(tmp_path / "keys")
    spec = {"root": str(tmp_path / "c"), "url": f"s3://{bucket}/upload-lock", "private": str(private),
            "public": str(public)}
    env = server.subprocess_env()  # type: ignore[attr-defined]
    proc = subprocess.run([sys.executable, "-c", UPLOAD_OBSERVED, json.dumps(spec)], capture_output=True, text=True,
                          env={**fresh_env(tmp_path / "home"), **env}, timeout=120, check=False)
    # Waiters for this key (a fleet's cold start) map the entry while this process compresses and uploads.
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"seen": [True], "uploads": 1}, proc.stderr


@pytest.mark.parametrize("xdg", [None, "", "  ", "/tmp/xdg-cache", "relative/dir", " /tmp/x"])
def test_the_default_root_is_platformdirs_user_cache_dir(home: Path, xdg: str | None) -> None:
    # wasmcache computes it itself on Linux (importing platformdirs costs ~8 ms of every run): same answer.
    extra = {} if xdg is None else {"XDG_CACHE_HOME": xdg}
    code = """
        import json, platformdirs
        from wasmcache._core import user_cache_dir
        print(json.dumps([user_cache_dir(), platformdirs.user_cache_dir("wasmcache", appauthor=False)]))
    """
    ours, theirs = json.loads(run_fresh(code, home, **extra).stdout)
    assert ours == theirs


@pytest.mark.parametrize("home_value", ["", "relative/home"])
def test_an_empty_or_relative_home_is_taken_as_unset(tmp_path: Path, home_value: str) -> None:
    # Found by an outside reader: HOME= made the default root /.cache/wasmcache (made at the file system's root);
    # a relative HOME, one under the working directory. As platformdirs: the password database's home instead.
    import pwd

    expected = os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".cache", "wasmcache")
    code = """
        import json, os, platformdirs
        from wasmcache._core import user_cache_dir
        print(json.dumps([user_cache_dir(), platformdirs.user_cache_dir("wasmcache", appauthor=False)]))
    """
    proc = run_fresh(code, tmp_path, cwd=tmp_path, HOME=home_value)
    assert json.loads(proc.stdout) == [expected, expected], proc.stderr
    stats = subprocess.run([sys.executable, "-m", "wasmcache.cli", "stats", "--json"], cwd=tmp_path, timeout=120,
                           env=fresh_env(tmp_path, HOME=home_value), capture_output=True, text=True, check=False)
    assert stats.stdout.count(f'"root": "{expected}"') == 1, stats.stderr
    pinned = subprocess.run([sys.executable, "-m", "wasmcache.cli", "exec", sys.executable, "-c",
                             "import os; print(os.environ['WASMCACHE_DIR'])"], cwd=tmp_path, timeout=120,
                            env=fresh_env(tmp_path, HOME=home_value), capture_output=True, text=True, check=False)
    assert pinned.stdout == expected + "\n", pinned.stderr


def test_a_default_root_left_with_only_engine_memos_by_wasmcache_0_1_is_adopted(home: Path, tmp_path: Path) -> None:
    # wasmcache 0.1 wrote engine memos into ~/.cache/wasmcache/engines/ before creating the root
    # (item 1): every later ModuleCache() refused that directory as foreign. It is ours: complete it.
    engines = home / ".cache" / "wasmcache" / "engines"
    engines.mkdir(parents=True)
    (engines / "d727fd253c6219658ddb170fac65f6bc.engine").write_bytes(b"stale memo\n")
    (tmp_path / "f.wasm").write_bytes(answer_module(19))
    proc = run_fresh("import wasmcache; wasmcache.ModuleCache().load('f.wasm'); print('ok')", home, cwd=tmp_path)
    assert proc.stdout.strip() == "ok", proc.stderr
    assert (home / ".cache" / "wasmcache" / "wasmcache-layout").exists()
    # ... but a directory with anything else in engines/ is still not adopted.
    other = tmp_path / "other"
    (other / "engines").mkdir(parents=True)
    (other / "engines" / "notes.txt").write_text("mine")
    refused = run_fresh(f"import wasmcache; wasmcache.ModuleCache({str(other)!r})", home)
    assert "NotACacheError" in refused.stderr


def test_a_missing_home_directory_is_never_created(tmp_path: Path) -> None:
    # Found by an outside reader: with HOME naming a directory that does not exist (a service account's
    # /nonexistent), the first load made it, and its parents, to hold ~/.cache/wasmcache. The module is compiled
    # without a cache, one warning says why, and nothing is made; under exec the same.
    home = tmp_path / "absent" / "home"
    (tmp_path / "m.wasm").write_bytes(answer_module(7))
    code = """
        import wasmcache, wasmtime
        cache = wasmcache.ModuleCache()
        module = cache.load("m.wasm")
        store = wasmtime.Store(cache.engine)
        print(wasmtime.Instance(store, module, []).exports(store)["answer"](store))
        wasmcache.ModuleCache().load("m.wasm")  # a second cache: still one warning per process
    """
    proc = run_fresh(code, home, cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "7\n"), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # one warning per process, however many caches
    assert f"the home directory {home} does not exist" in proc.stderr
    assert not (tmp_path / "absent").exists()
    program = ("import wasmtime; e = wasmtime.Engine(); m = wasmtime.Module.from_file(e, 'm.wasm'); "
               "s = wasmtime.Store(e); print(wasmtime.Instance(s, m, []).exports(s)['answer'](s))")
    wrapped = subprocess.run([sys.executable, "-m", "wasmcache.cli", "exec", sys.executable, "-c", program],
                             capture_output=True, text=True, env=fresh_env(home), cwd=tmp_path, timeout=120,
                             check=False)
    assert (wrapped.returncode, wrapped.stdout) == (0, "7\n"), wrapped.stderr
    assert wrapped.stderr.count("\n") == 1, wrapped.stderr
    assert f"the home directory {home} does not exist" in wrapped.stderr
    # doctor, what such an account's owner runs to learn why: a danger with its fix, not a refusal (a reader)
    doctor = subprocess.run([sys.executable, "-m", "wasmcache.cli", "doctor", "--json"], capture_output=True,
                            text=True, env=fresh_env(home), cwd=tmp_path, timeout=120, check=False)
    assert doctor.returncode == 1, doctor.stderr
    first = json.loads(doctor.stdout)[0]
    assert (first["severity"], first["fix"]) == ("danger", "set WASMCACHE_DIR to a directory this account may write")
    assert f"the home directory {home} does not exist" in first["problem"]
    assert not (tmp_path / "absent").exists()
