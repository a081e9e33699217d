"""`python -m wasmcache._run [--debug] [--verbose] ARGS...`: `wasmcache run ARGS...` without the CLI group."""

from __future__ import annotations

import sys

from . import main


def _entry(argv: list[str]) -> int:
    debug = verbose = False
    while argv and argv[0] in ("--debug", "--verbose"):
        debug = debug or argv[0] == "--debug"
        verbose = verbose or argv[0] == "--verbose"
        argv = argv[1:]
    return main(argv, debug=debug, verbose=verbose)


if __name__ == "__main__":
    sys.exit(_entry(sys.argv[1:]))
