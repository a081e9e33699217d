"""The one place the suite reaches into `tests/`: its wasm generator and its real S3 server."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

TESTS = Path(__file__).resolve().parent.parent / "tests"


def tests_module(name: str) -> ModuleType:
    """Import `tests/<name>.py` (e.g. "wasmgen", "s3server") as the tests themselves see it."""
    if str(TESTS) not in sys.path:
        sys.path.append(str(TESTS))  # appended: nothing of the tests dir shadows an installed module
    return importlib.import_module(name)
