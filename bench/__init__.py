"""wasmcache's benchmark suite: `python -m bench` (or `make bench`); `--quick` for a short run.

Every number comes from fresh processes (one per sample), timed inside the child around the load
only, with the contenders interleaved and summarized by median and spread. See `bench/README.md`.
"""
