# protorefine: `make run` opens napari with a sample cohort; `make test` runs the suite;
# `make test-fast` the quick library tests (no slow end-to-end runs, no GUI).
.PHONY: run test test-fast setup lint bench clean

run:
	scripts/run.sh

test:
	scripts/test.sh

test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow and not gui"

setup:
	scripts/setup.sh

lint: setup
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/ruff format --check src tests benchmarks

bench: setup
	.venv/bin/python benchmarks/quality.py
	.venv/bin/python benchmarks/features_bench.py
	.venv/bin/python benchmarks/stages_bench.py
	.venv/bin/python benchmarks/tissue_bench.py

clean:
	rm -rf .venv out .pytest_cache .ruff_cache
