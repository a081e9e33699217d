# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv test test-fast lint demo bench mutants clean

$(STAMP): pyproject.toml hatch_build.py src/wasmcache-launcher.c src/wasmcache-cli.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,s3,bench]'
	touch $(STAMP)

venv: $(STAMP)

## make test: the whole suite, real modules and the S3 server included (what CI runs)
test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## make test-fast: skip the slow real-module tests (local iteration)
test-fast: venv
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check src tests bench scripts hatch_build.py
	$(BIN)/mypy

## make demo: compile and run Yosys (49 MB of wasm) twice through the cache, then show stats
demo: venv
	$(BIN)/python scripts/demo.py

## make bench: every benchmark figure, into docs/bench-results.json and docs/bench.png (bench/README.md);
## BENCH_ARGS="--quick", "--only hit,guest", "--against REV" pass through
BENCH_ARGS ?=
bench: venv
	$(BIN)/python -m bench $(BENCH_ARGS)

## make mutants: break each safety property on purpose (tests/mutants.py); every mutation must be killed
mutants: venv
	$(BIN)/python scripts/mutants.py $(MUTANTS_ARGS)

clean:
	rm -rf $(VENV) .demo-cache .pytest_cache .mypy_cache .ruff_cache
