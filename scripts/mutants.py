"""Run the curated mutation list (tests/mutants.py): every mutation must be killed by its tests.

For each mutation: copy src/ to a temporary directory, apply its edits there (each anchor must
occur exactly once, else the mutation is "stale"), and run the tests named for it with that copy
first on PYTHONPATH, so the test process and every child process it starts import the mutated
package (an editable install only appends the checkout's src/ through a .pth file, after
PYTHONPATH). Each mutated file also records the pid of every process that imports it, so a
survivor whose mutation was never even imported is told apart.

    python scripts/mutants.py            # all, after a baseline run of their tests on unmutated src
    python scripts/mutants.py --list     # ids and properties
    python scripts/mutants.py --only ID [--only ID ...]

A mutation is "killed" when every test named for it fails; "weak" when some named test passes
(that test does not protect the property: drop it from the list or fix it).

Exit status: 0 if every mutation run was killed; 1 if any survived, is weak, stale or could not run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from mutants import MUTANTS, Mutant  # noqa: E402 - tests/ is put on the path just above

# Appended to every mutated file: which processes imported the mutated copy.
_MARKER = """

try:  # added by scripts/mutants.py
    with open({path!r}, "a") as _mutant_marker:
        _mutant_marker.write("%d\\n" % __import__("os").getpid())
except OSError:
    pass
"""


def apply(mutant: Mutant, src: Path, marker: Path | None) -> str | None:
    """Apply `mutant` to the copy of src/ at `src`; None, or why it is stale."""
    changed: dict[Path, str] = {}
    for edit in mutant.edits:
        path = src / "wasmcache" / edit.file
        if path not in changed:
            if not path.is_file():
                return f"{edit.file}: no such file"
            changed[path] = path.read_text()
        count = changed[path].count(edit.anchor)
        if count != 1:
            return f"{edit.file}: anchor occurs {count} times: {edit.anchor.splitlines()[0]!r}"
        changed[path] = changed[path].replace(edit.anchor, edit.replacement)
    for path, text in changed.items():
        python = marker is not None and path.suffix == ".py"  # the launcher is C
        path.write_text(text + (_MARKER.format(path=str(marker)) if python else ""))
    return None


def run_tests(src: Path, tests: list[str], timeout: float) -> tuple[int, str, float]:
    """(pytest's exit code, its output, seconds) for `tests` against the package copy in `src`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    env.pop("PYTHONSAFEPATH", None)
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *tests],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, output = -1, f"timed out after {timeout:.0f} s\n{exc.stdout or ''}"
    return code, output, time.monotonic() - started


def failed(output: str) -> list[str]:
    """The node ids pytest's summary lists as failed."""
    return [m.group(1) for m in re.finditer(r"^FAILED (.+?)(?: - .*)?$", output, re.MULTILINE)]


def copy_src(work: Path) -> Path:
    src = work / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


def assertion_lines(output: str, limit: int = 3) -> list[str]:
    """The first lines pytest marks with `E` (what each failing test saw), to check a kill is the property's."""
    return [line[1:].strip() for line in output.splitlines() if line.startswith("E ")][:limit]


def run_one(mutant: Mutant, timeout: float, *, show: bool = False) -> tuple[str, float, str]:
    """(result, seconds, detail) for one mutation."""
    with tempfile.TemporaryDirectory(prefix=f"wasmcache-mutant-{mutant.id}-") as tmp:
        work = Path(tmp)
        src = copy_src(work)
        marker = work / "imported-by"
        stale = apply(mutant, src, marker)
        if stale is not None:
            return "stale", 0.0, stale
        code, output, seconds = run_tests(src, list(mutant.tests), timeout)
        importers = len(marker.read_text().split()) if marker.exists() else 0
        if show:
            for line in assertion_lines(output):
                print(f"    {line[:150]}")
        if code == 1:
            failures = failed(output)
            missed = [t for t in mutant.tests if not any(f == t or f.startswith(t + "[") for f in failures)]
            if missed:  # a named test that passes under the mutation does not protect the property
                return "weak", seconds, f"{len(missed)} of {len(mutant.tests)} named tests passed: {missed[0]}"
            return "killed", seconds, f"by all {len(mutant.tests)} named tests ({importers} processes ran the mutant)"
        if code == 0:
            why = "the mutated code was never imported" if importers == 0 else f"{importers} processes ran it"
            return "SURVIVED", seconds, why
        tail = " | ".join(output.strip().splitlines()[-3:])
        return "error", seconds, f"pytest exit {code}: {tail[-200:]}"


def baseline(mutants: list[Mutant], timeout: float) -> bool:
    """Every named test passes on the unmutated copy (else a 'kill' would prove nothing)."""
    tests = sorted({t for m in mutants for t in m.tests})
    with tempfile.TemporaryDirectory(prefix="wasmcache-mutant-baseline-") as tmp:
        src = copy_src(Path(tmp))
        code, output, seconds = run_tests(src, tests, timeout * 4)
    print(f"baseline: {len(tests)} tests on unmutated src: {'pass' if code == 0 else 'FAIL'} ({seconds:.1f} s)")
    if code != 0:
        print(output[-3000:])
    return code == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", metavar="ID", help="run only this mutation (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run of the tests on unmutated src")
    parser.add_argument("--show", action="store_true", help="print what the failing tests asserted")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per mutation (default 600)")
    args = parser.parse_args(argv)

    selected = list(MUTANTS)
    if args.only:
        unknown = set(args.only) - {m.id for m in MUTANTS}
        if unknown:
            parser.error(f"unknown mutation id(s): {', '.join(sorted(unknown))}")
        selected = [m for m in MUTANTS if m.id in args.only]
    width = max(len(m.id) for m in selected)
    if args.list:
        for m in selected:
            print(f"{m.id:<{width}}  {m.prop}")
        return 0
    if not args.no_baseline and not baseline(selected, args.timeout):
        return 1
    results = []
    started = time.monotonic()
    for m in selected:
        result, seconds, detail = run_one(m, args.timeout, show=args.show)
        results.append(result)
        print(f"{m.id:<{width}}  {result:<8}  {seconds:6.1f} s  {detail}", flush=True)
    counts = {r: results.count(r) for r in dict.fromkeys(results)}
    summary = ", ".join(f"{n} {r.lower()}" for r, n in counts.items())
    print(f"{len(results)} mutations: {summary} in {time.monotonic() - started:.0f} s")
    return 0 if all(r == "killed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
