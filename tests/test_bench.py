"""The benchmark suite measures today's code, and says so loudly when the code it measures has moved.

Timings are never asserted here (they belong in `make bench`): only that the profiler and a figure run,
and that the profiler refuses to measure nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.profiler import EXPECTED  # noqa: E402


def _profiler(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.profiler", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)


# Private methods of the hit path used only in their own file: renamed there, the program still works.
@pytest.mark.parametrize("measured", ["wasmcache._cache:ModuleCache._digest", "wasmcache._cache:_deserialize"])
def test_profiler_fails_in_one_line_when_a_measured_function_is_renamed(tmp_path, measured):
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
    control = _profiler("cprofile", "--src", str(src))
    assert control.returncode == 0, control.stderr  # the copy itself profiles fine

    assert measured in EXPECTED
    module, qualname = measured.split(":")
    name = qualname.rsplit(".", 1)[-1]
    path = src / (module.replace(".", "/") + ".py")
    text, renamed = re.subn(rf"\b{re.escape(name)}\b(?=\()", f"{name}_moved", path.read_text())
    assert renamed >= 1
    path.write_text(text)

    proc = _profiler("cprofile", "--src", str(src))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("bench.profiler: ")
    assert measured in lines[0]
    assert "Traceback" not in proc.stderr


def test_every_profiler_mode_runs_on_todays_code(tmp_path):
    out = tmp_path / "profile.json"
    proc = _profiler("--json", str(out))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert set(results["cprofile"]["expected"]) == set(EXPECTED)
    assert "wasmcache._errors" in results["importtime"]["import wasmcache"]["wasmcache_modules"]
    if shutil.which("strace"):
        assert results["strace"]["hit_total"] > 0
    else:
        assert results["strace"] == {"skipped": "strace not installed"}


@pytest.mark.slow  # the 49 MB Yosys module: three compiles to prepare it
def test_quick_run_of_one_figure(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "hit"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((REPO / "bench" / "results" / "results-quick-partial.json").read_text())
    assert list(results["figures"]) == ["hit"]
    assert {g["status"] for g in results["goals"]} <= {"PASS", "FAIL"}  # judged, whatever the machine's load
