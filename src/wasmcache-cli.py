#!/usr/bin/env python3
# bin/.wasmcache-python: the Python CLI, which bin/wasmcache (the native launcher, src/wasmcache-launcher.c)
# hands every command it does not serve itself. The installer points the line above at the right Python.
# Where the wheel was built without a C compiler, this file is bin/wasmcache itself (hatch_build.py).
import sys

from wasmcache.cli import main

sys.exit(main())
