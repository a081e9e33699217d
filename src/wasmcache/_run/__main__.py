"""`python -m wasmcache._run [--debug] [--verbose] ARGS...`: `wasmcache run ARGS...` without the CLI group."""

from __future__ import annotations

import sys
from typing import NoReturn

from . import run_and_exit


def entry(argv: list[str]) -> NoReturn:
    debug = verbose = False
    while argv and argv[0] in ("--debug", "--verbose"):
        debug = debug or argv[0] == "--debug"
        verbose = verbose or argv[0] == "--verbose"
        argv = argv[1:]
    run_and_exit(argv, debug=debug, verbose=verbose)


if __name__ == "__main__":
    entry(sys.argv[1:])
