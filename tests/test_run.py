"""`wasmcache run` as a user meets it: its own options, hostile inputs, errors, imports, the cache.

What `wasmtime run` does is checked program by program in test_run_differential.py; this file
covers what is wasmcache's own (the cache, --cache-dir, -C cache=n, --memory, one-line errors,
the imports of a hit) and the failures it exists to avoid, each with its naive control.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_python
from runcorpus import PROGRAMS, wasm

RUN = [sys.executable, "-m", "wasmcache.cli", "run"]


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, stdin: bytes = b"",
        timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WASMCACHE_")}
    full_env.update(env or {})
    return subprocess.run([*RUN, *args], input=stdin, capture_output=True, env=full_env, cwd=cwd, timeout=timeout,
                          check=False)


def one_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    err = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("wasmcache: error: "), err
    return err


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "hello.wasm"
    path.write_bytes(wasm("hello"))
    return path


def entries(root: Path) -> list[Path]:
    return sorted(root.rglob("*.cwasm")) if root.exists() else []


# --- as a new user -------------------------------------------------------------------------------


def test_a_new_user_runs_a_module_and_a_component_with_the_default_cache(tmp_path: Path) -> None:
    """Fresh HOME, no XDG_* or WASMCACHE_* variables: the cache lands in ~/.cache/wasmcache."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "WASMCACHE_"))}
    env["HOME"] = str(home)
    (tmp_path / "args.wasm").write_bytes(wasm("args"))
    (tmp_path / "c-args.wasm").write_bytes(wasm("c-args"))
    for name in ("args.wasm", "c-args.wasm"):
        for _ in range(2):  # a miss, then a hit
            proc = subprocess.run([*RUN, name, "one", "two words"], capture_output=True, env=env, cwd=tmp_path,
                                  timeout=120, check=False)
            assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"{name}\none\ntwo words\n".encode(), b"")
    assert len(entries(home / ".cache" / "wasmcache")) == 2


def test_help_and_usage_errors(program: Path) -> None:
    shown = run("--help")
    assert shown.returncode == 0
    assert b"Usage: wasmcache run" in shown.stdout
    assert b"--invoke" in shown.stdout
    missing = run()
    assert missing.returncode == 2
    assert "missing the WASM file" in one_line(missing)
    for args, named in ((["--no-such-flag", str(program)], "--no-such-flag"),
                        (["-W", "timeout=soon", str(program)], "timeout=soon"),
                        (["-S", "no-such=y", str(program)], "-S no-such"),
                        (["-W", "max-wasm-stack=1000", str(program)], "-W max-wasm-stack"),
                        (["--profile", "perfmap", str(program)], "--profile"),
                        (["--dir"], "--dir needs a value")):
        proc = run(*args)
        assert proc.returncode == 2, proc.stderr
        assert named in one_line(proc)


# --- hostile input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda _: Path("/dev/null"), "is empty"),
        (lambda d: _mkdir(d / "a dir"), "is a directory"),
        (lambda d: _write(d / "empty.wasm", b""), "is empty"),
        (lambda d: _write(d / "garbage.wasm", b"\x00\x01\x02garbage"), "not a WebAssembly file"),
        (lambda d: _write(d / "text.wasm", b"this is not wat"), "not valid WAT text: expected `(`"),
        (lambda d: _write(d / "bad.wasm", b"\0asm\x01\0\0\0\xff"), "cannot compile"),
        (lambda d: _write(d / "app.cwasm", b"\x7fELF\x02\x01\x01" + bytes(100)), "precompiled (.cwasm)"),
        (lambda d: d / "my [odd] name (1).wasm", "my [odd] name (1).wasm: no such file"),
    ],
    ids=["dev-null", "directory", "empty", "binary-garbage", "text-garbage", "invalid-wasm", "cwasm", "missing"],
)
def test_bad_input_is_one_line_naming_the_file(make, expected: str, tmp_path: Path) -> None:
    target = make(tmp_path / "input")
    root = tmp_path / "cache"
    proc = run("--cache-dir", str(root), str(target))
    assert proc.returncode == 2
    line = one_line(proc)
    assert expected in line
    assert str(target) in line  # named verbatim, brackets and spaces included
    assert entries(root) == []
    assert not [p for p in root.rglob("*") if p.is_file() and ".tmp" in p.name] if root.exists() else True


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_wat_text_is_accepted_and_cached_by_its_binary(tmp_path: Path) -> None:
    source = tmp_path / "hello.wat"
    source.write_text(PROGRAMS["hello"])
    root = tmp_path / "cache"
    for _ in range(2):
        proc = run("--cache-dir", str(root), str(source), "x")
        assert (proc.returncode, proc.stdout) == (2, b"hello from wasm\n"), proc.stderr
    assert len(entries(root)) == 1


def test_a_pipe_as_the_program(tmp_path: Path) -> None:
    """`<(cat prog.wasm)`: a pipe is read once, like wasmtime; argv[0] is its name."""
    (tmp_path / "args.wasm").write_bytes(wasm("args"))
    command = f'exec {" ".join(RUN)} --cache-dir {tmp_path / "cache"} <(cat {tmp_path / "args.wasm"}) x'
    proc = subprocess.run(["bash", "-c", command], capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith(b"\nx\n")


# --- what wasmtime-py alone gets wrong: each with its naive control --------------------------------------


def test_a_v128_parameter_is_refused_not_a_process_abort(tmp_path: Path) -> None:
    values = _write(tmp_path / "values.wasm", wasm("values"))
    naive = run_python("""
        import wasmtime
        engine = wasmtime.Engine()
        store = wasmtime.Store(engine)
        module = wasmtime.Module(engine, '(module (func (export "takes-v128") (param v128)))')
        wasmtime.Instance(store, module, []).exports(store)["takes-v128"](store, 1)
        """, check=False)
    assert naive.returncode in (-signal.SIGABRT, 128 + signal.SIGABRT), naive  # wasm_valtype_kind aborts
    for name in ("takes-v128", "takes-funcref", "takes-externref"):
        proc = run("--cache-dir", str(tmp_path / "cache"), "--invoke", name, str(values), "1")
        assert proc.returncode == 1
        assert "unsupported argument type" in one_line(proc)


def test_a_closed_stdout_does_not_become_a_file_of_ours(tmp_path: Path) -> None:
    """With fd 1 closed, the next file opened takes fd 1 and the guest's "stdout" writes land in it."""
    status = _write(tmp_path / "write-status.wasm", wasm("write-status"))
    naive = """
        import sys, wasmtime
        engine = wasmtime.Engine()
        module = wasmtime.Module.from_file(engine, sys.argv[1])
        store = wasmtime.Store(engine)
        wasi = wasmtime.WasiConfig()
        wasi.inherit_stdout()
        store.set_wasi(wasi)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        try:
            linker.instantiate(store, module).exports(store)["_start"](store)
        except wasmtime.ExitTrap as exc:
            sys.exit(exc.code)
        except wasmtime.WasmtimeError:
            sys.exit(99)
    """
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    control = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-c", naive, str(status)],
                             capture_output=True, env=env, timeout=120, check=False)
    assert control.returncode != 3, "the naive runner's write reached a real stdout?"
    ours = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *RUN, "--cache-dir", str(tmp_path / "cache"),
                           str(status)], capture_output=True, timeout=120, check=False)
    assert (ours.returncode, ours.stderr) == (3, b"")  # the write succeeded into /dev/null, as in wasmtime


# --- wasmcache's own options --------------------------------------------------------------------------


def test_cache_dir_after_run_wins_over_the_callers(program: Path, tmp_path: Path,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    from wasmcache._run import main

    given, caller = tmp_path / "given", tmp_path / "caller"
    assert main(["--cache-dir", str(given), str(program)], cache_dir=str(caller)) == 1
    assert main([str(program)], cache_dir=str(caller)) == 1
    assert capfd.readouterr().out == "hello from wasm\n" * 2
    assert len(entries(given)) == 1
    assert len(entries(caller)) == 1


def test_cache_off_memory_mode_and_engine_namespaces(program: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    off = run("--cache-dir", str(root), "-C", "cache=n", str(program))
    assert (off.returncode, off.stdout) == (1, b"hello from wasm\n")
    assert entries(root) == []
    for options in ([], ["--memory"], ["-O", "opt-level=0"], ["-W", "fuel=1000000"], ["-W", "timeout=30s"]):
        proc = run("--cache-dir", str(root), *options, str(program))
        assert (proc.returncode, proc.stdout, proc.stderr) == (1, b"hello from wasm\n", b"")
    # default and --memory share one entry; opt-level=0, fuel and epochs (timeout) are other engines
    assert len(entries(root)) == 4


def test_debug_shows_the_whole_chain(tmp_path: Path) -> None:
    traps = _write(tmp_path / "traps.wasm", wasm("traps"))
    short = run("--cache-dir", str(tmp_path / "cache"), "--invoke", "div0", str(traps))
    assert short.returncode == 134
    assert one_line(short).endswith("traps.wasm: wasm trap: integer divide by zero\n")
    full = subprocess.run([sys.executable, "-m", "wasmcache.cli", "--debug", "run", "--cache-dir",
                           str(tmp_path / "cache"), "--invoke", "div0", str(traps)], capture_output=True,
                          timeout=120, check=False)
    assert full.returncode == 134
    text = full.stderr.decode()
    assert "error while executing at wasm backtrace" in text
    assert "Caused by:" in text


def test_a_deadline_says_so(tmp_path: Path) -> None:
    loop = _write(tmp_path / "loop.wasm", wasm("loop"))
    proc = run("--cache-dir", str(tmp_path / "cache"), "-W", "timeout=200ms", str(loop))
    assert proc.returncode == 134
    assert one_line(proc).endswith("loop.wasm: wasm trap: interrupt (the -W timeout=200ms deadline passed)\n")


def test_preload_links_another_module_through_the_cache(tmp_path: Path) -> None:
    lib = _write(tmp_path / "lib.wasm", b"")
    import wasmtime

    lib.write_bytes(wasmtime.wat2wasm('(module (func (export "answer") (result i32) i32.const 40))'))
    main_wat = """(module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (import "lib" "answer" (func $answer (result i32)))
      (memory (export "memory") 1)
      (func (export "_start") (call $exit (i32.add (call $answer) (i32.const 2)))))"""
    app = _write(tmp_path / "app.wasm", bytes(wasmtime.wat2wasm(main_wat)))
    root = tmp_path / "cache"
    proc = run("--cache-dir", str(root), "--preload", f"lib={lib}", str(app))
    assert proc.returncode == 42, proc.stderr
    assert len(entries(root)) == 2
    comp = _write(tmp_path / "c.wasm", wasm("c-hello"))
    refused = run("--cache-dir", str(root), "--preload", f"c={comp}", str(app))
    assert refused.returncode == 2
    assert "components cannot be loaded with `--preload`" in one_line(refused)


def test_a_remote_without_trusted_keys_is_one_line(program: Path, tmp_path: Path) -> None:
    proc = run("--cache-dir", str(tmp_path / "cache"), "--remote", "s3://bucket", str(program))
    assert proc.returncode == 2
    assert "trusted" in one_line(proc)


# --- start-up: a hit imports only what it needs ----------------------------------------------------------

_IMPORTS = """
import json, sys
from wasmcache._run import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump(sorted(sys.modules), f)
sys.exit(code)
"""

# The remote tier's settings (wasmcache._remote._settings, a few lines) are read by every ModuleCache;
# the tier itself (and its keys, artifact format and HTTP code) only after a local miss.
_NEVER_ON_A_HIT = ("click", "rich", "boto3", "botocore", "cryptography", "wasmcache._remote._tier",
                   "wasmcache._remote._keys", "wasmcache._remote._artifact", "wasmcache._remote._lean",
                   "wasmcache.cli", "wasmcache._maintenance", "dataclasses", "importlib.metadata", "subprocess")


@pytest.mark.parametrize("kind", ["module", "component"])
def test_a_hit_imports_nothing_it_does_not_need(kind: str, tmp_path: Path) -> None:
    name = "hello" if kind == "module" else "c-hello"
    path = _write(tmp_path / f"{name}.wasm", wasm(name))
    root = tmp_path / "cache"
    for _ in range(2):  # the second run is the hit that is checked
        proc = subprocess.run([sys.executable, "-c", _IMPORTS, str(tmp_path / "modules.json"), "--cache-dir",
                               str(root), str(path)], capture_output=True, timeout=120, check=False)
        assert proc.returncode == (1 if kind == "module" else 0), proc.stderr
    loaded = set(json.loads((tmp_path / "modules.json").read_text()))
    never = set(_NEVER_ON_A_HIT) - ({"dataclasses"} if kind == "component" else set())  # wasmtime.component's
    assert not [m for m in loaded if m.split(".")[0] in never or m in never]
    invoke_only = {"wasmcache._run._values", "wasmcache._run._invoke", "fractions", "decimal"}
    assert not loaded & invoke_only
    assert ("wasmtime.component" in loaded) is (kind == "component")
    assert ("wasmcache._run._component" in loaded) is (kind == "component")


def test_ctrl_c_stops_a_running_guest_like_wasmtime(tmp_path: Path) -> None:
    """Python's SIGINT handler only sets a flag, checked after the guest's C call returns: never, here."""
    import time

    loop = _write(tmp_path / "loop.wasm", wasm("loop"))
    args = ["--cache-dir", str(tmp_path / "cache"), str(loop)]
    in_process = "import sys; from wasmcache._run import main; main(sys.argv[1:])"
    naive = subprocess.Popen([sys.executable, "-c", in_process, *args])
    ours = subprocess.Popen([*RUN, *args])
    try:
        time.sleep(2)
        naive.send_signal(signal.SIGINT)
        ours.send_signal(signal.SIGINT)
        assert ours.wait(timeout=10) == -signal.SIGINT
        with pytest.raises(subprocess.TimeoutExpired):  # the control: main() in-process keeps running
            naive.wait(timeout=1)
    finally:
        for proc in (naive, ours):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
