"""wasmcache's benchmarks: `python -m bench` (`make bench`), `python -m bench.profiler`; see bench/README.md."""
