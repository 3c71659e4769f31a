# ich3d: `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= runs/demo-data

.PHONY: help install demo test test-all lint bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install ich3d with the dev extra

demo: $(STAMP) ## the main job: synthetic RSNA data -> ingest -> 3 training stages -> evaluation (CPU, minutes)
	$(BIN)/python -m ich3d.demo --workdir $(DEMO)

test: $(STAMP) ## the test suite without the slow tests (what CI runs)
	$(BIN)/python -m pytest -m "not slow" -q

test-all: $(STAMP) ## every test, slow ones included
	$(BIN)/python -m pytest -q

lint: $(STAMP) ## ruff
	$(BIN)/ruff check ich3d tests benchmarks

bench: $(STAMP) ## all benchmarks (prints ratios against baselines measured in the same run)
	$(BIN)/python -m benchmarks.bench_ingest
	$(BIN)/python -m benchmarks.bench_delong
	$(BIN)/python -m benchmarks.bench_train

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache
