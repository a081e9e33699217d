"""The curated mutation list (tests/mutants.py) still fits the code: no wasmtime work, fast.

A refactor that moves the safety code makes an anchor stale; this fails until the list is
retargeted, so `make mutants` keeps checking what it claims to check.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mutants import MUTANTS, Mutant

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "src" / "wasmcache"


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_every_anchor_occurs_exactly_once(mutant: Mutant) -> None:
    texts: dict[str, str] = {}
    for edit in mutant.edits:
        if edit.file not in texts:
            texts[edit.file] = (PACKAGE / edit.file).read_text()
        assert texts[edit.file].count(edit.anchor) == 1, f"{mutant.id}: stale anchor in {edit.file}: {edit.anchor!r}"
        assert edit.anchor != edit.replacement
        texts[edit.file] = texts[edit.file].replace(edit.anchor, edit.replacement)
    for name, text in texts.items():  # the mutated file still builds: the tests, not a SyntaxError, kill it
        if name.endswith(".c"):
            compiler = shutil.which("cc") or shutil.which("gcc")
            assert compiler, "no C compiler"
            subprocess.run([compiler, "-fsyntax-only", "-Wall", "-Werror", "-x", "c", "-"], input=text, text=True,
                           check=True)
        else:
            compile(text, name, "exec")


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_every_mutation_names_tests_that_exist(mutant: Mutant) -> None:
    assert mutant.tests, f"{mutant.id}: no test to kill it"
    assert mutant.prop
    assert "\n" not in mutant.prop
    for node in mutant.tests:
        path, _, name = node.partition("::")
        function = name.split("[", 1)[0]
        assert re.search(rf"^def {re.escape(function)}\(", (REPO / path).read_text(), re.MULTILINE), node


def test_ids_are_unique_and_the_list_is_whole() -> None:
    ids = [m.id for m in MUTANTS]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 30


def test_every_guard_test_is_named_by_a_mutation() -> None:
    # Each test in test_guards.py exists to kill a mutation (or is the naive control of one that does):
    # one that no mutation names is unchecked.
    named = {node.split("::")[1].split("[")[0] for m in MUTANTS for node in m.tests}
    guards = re.findall(r"^def (test_\w+)\(", (REPO / "tests" / "test_guards.py").read_text(), re.MULTILINE)
    assert sorted(name for name in set(guards) - named if "_control_" not in name) == []
