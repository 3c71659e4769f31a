# ich3d: `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DATA ?= runs/demo-data
# the Slurm suite's jobs outlive pytest's rotation of /tmp/pytest-of-$USER: a folder of its own
SLURM_TMP ?= /var/tmp/ich3d-test-slurm
COMPARE_SYSTEMS ?= patel2019 dawud2019_alexnet dawud2019_alexnet_svm dawud2019_cnn soni2025_vgg16 \
	kumar2022_densenet201 ayesha2025_cnn_lstm ayesha2025_cnn_gru ayesha2025_alexnet_ae_svm
# the RSNA 2019 winners' CPU versions (configs/compare/rsna2019_*.yaml) are not in the default set:
# they take about 3x and 7x the CPU time of a default three-stage system (docs/published-systems.md);
# `make compare COMPARE_WINNERS=1` adds them
COMPARE_EXTRA := rsna2019_1st rsna2019_2nd
ifdef COMPARE_WINNERS
COMPARE_SYSTEMS += $(COMPARE_EXTRA)
endif
ifndef COMPARE_RUN
COMPARE_RUN := compare-$(shell date -u +%Y%m%d-%H%M%S)
endif
ifndef DEMO_RUN
DEMO_RUN := demo-$(shell date -u +%Y%m%d-%H%M%S)
endif
# the training seed of `make demo` / `make compare` (data and patient split stay fixed)
SEED ?= 0
SEEDS ?= 0 1 2
# The demo's figures depend on the CPU thread count (CPU kernels sum in another order
# with another count), so its targets pin torch to one thread: a seed's figures are the
# same on a 2-core laptop and a 64-core node, and one thread is also what a shared
# machine needs (two OpenMP threads on two busy cores spin-wait). Not user-settable.
DEMO_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
ifndef DEMO_CV_RUN
DEMO_CV_RUN := demo-cv-$(shell date -u +%Y%m%d-%H%M%S)
endif
ifndef SEEDS_RUN
SEEDS_RUN := seeds-$(shell date -u +%Y%m%d-%H%M%S)
endif

.PHONY: help install demo demo-cv demo-seeds compare compare-seeds test test-all test-slurm docker-check lint bench bench-scale clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install ich3d with the dev extra

demo: $(STAMP) ## the main job: synthetic RSNA data -> ingest -> 3 training stages -> evaluation (CPU, minutes)
	@test -f $(DEMO_DATA)/stage_2_train.csv || \
		$(BIN)/ich3d synth $(DEMO_DATA) --patients 200 --size 128 --slices 12 20 --seed 0
	$(BIN)/ich3d ingest --images $(DEMO_DATA)/stage_2_train --labels $(DEMO_DATA)/stage_2_train.csv \
		--out $(DEMO_DATA)/cache --workers 2
	$(DEMO_ENV) $(BIN)/ich3d train configs/demo.yaml --stage all --run-id $(DEMO_RUN) seed=$(SEED)
	$(DEMO_ENV) $(BIN)/ich3d evaluate runs/demo/$(DEMO_RUN)
	@echo "ich3d demo: run directory runs/demo/$(DEMO_RUN) (report: runs/demo/$(DEMO_RUN)/evaluation/report.md)"

demo-cv: $(STAMP) ## the demo with 5 folds (configs/demo_cv.yaml): every fold's 3 stages -> OOF table + fold ensemble on test (CPU)
	@test -f $(DEMO_DATA)/stage_2_train.csv || \
		$(BIN)/ich3d synth $(DEMO_DATA) --patients 200 --size 128 --slices 12 20 --seed 0
	$(BIN)/ich3d ingest --images $(DEMO_DATA)/stage_2_train --labels $(DEMO_DATA)/stage_2_train.csv \
		--out $(DEMO_DATA)/cache --workers 2
	$(DEMO_ENV) $(BIN)/ich3d train configs/demo_cv.yaml --folds all --stage all --run-id $(DEMO_CV_RUN) seed=$(SEED)
	$(DEMO_ENV) $(BIN)/ich3d evaluate runs/demo-cv/$(DEMO_CV_RUN)
	@echo "ich3d demo-cv: run directory runs/demo-cv/$(DEMO_CV_RUN) (report: runs/demo-cv/$(DEMO_CV_RUN)/evaluation/report.md)"

compare: $(STAMP) ## every published system, small, on the demo's synthetic data (CPU, ~30 min) -> ich3d compare table
	@test -f $(DEMO_DATA)/stage_2_train.csv || \
		$(BIN)/ich3d synth $(DEMO_DATA) --patients 200 --size 128 --slices 12 20 --seed 0
	$(BIN)/ich3d ingest --images $(DEMO_DATA)/stage_2_train --labels $(DEMO_DATA)/stage_2_train.csv \
		--out $(DEMO_DATA)/cache --workers 2
	@set -e; for s in $(COMPARE_SYSTEMS); do \
		echo "== $$s"; \
		$(DEMO_ENV) $(BIN)/ich3d train configs/compare/$$s.yaml --run-id $(COMPARE_RUN) seed=$(SEED) \
			--stage $$(sed -n 's/^# compare-stage: \([a-z_]*\).*/\1/p' configs/compare/$$s.yaml); \
		$(DEMO_ENV) $(BIN)/ich3d evaluate runs/compare/$$s/$(COMPARE_RUN) --device cpu --no-wandb --no-progress; \
		rm -f runs/compare/$$s/$(COMPARE_RUN)/*/last.ckpt; \
	done
	$(BIN)/ich3d compare $(foreach s,$(COMPARE_SYSTEMS),runs/compare/$(s)/$(COMPARE_RUN)) --out runs/compare/$(COMPARE_RUN)
	@cat runs/compare/$(COMPARE_RUN)/compare.md

demo-seeds: $(STAMP) ## make demo once per seed of SEEDS (default 0 1 2), then ich3d seeds: AUC ranges
	@set -e; for s in $(SEEDS); do $(MAKE) --no-print-directory demo SEED=$$s DEMO_RUN=$(SEEDS_RUN)-seed$$s; done
	$(DEMO_ENV) $(BIN)/ich3d seeds $(foreach s,$(SEEDS),runs/demo/$(SEEDS_RUN)-seed$(s)) --out runs/demo/$(SEEDS_RUN)

compare-seeds: $(STAMP) ## make compare once per seed of SEEDS (default 0 1 2), then ich3d seeds over every system
	@set -e; for s in $(SEEDS); do $(MAKE) --no-print-directory compare SEED=$$s COMPARE_RUN=$(SEEDS_RUN)-seed$$s; done
	$(BIN)/ich3d seeds $(foreach s,$(SEEDS),$(foreach c,$(COMPARE_SYSTEMS),runs/compare/$(c)/$(SEEDS_RUN)-seed$(s))) \
		--out runs/compare/$(SEEDS_RUN)

test: $(STAMP) ## the test suite without the slow tests (CI runs it, then test-slurm)
	$(BIN)/python -m pytest -m "not slow and not slurm" -q

test-all: $(STAMP) ## every test, slow ones included (not the Slurm suite)
	$(BIN)/python -m pytest -m "not slurm" -q

test-slurm: $(STAMP) ## slurm/ against a real single-node Slurm it starts (root; apt-get installs slurm-wlm if absent; CI runs it)
	$(BIN)/python -m pytest -m slurm -q -p no:cacheprovider --basetemp=$(SLURM_TMP) tests/test_slurm.py

docker-check: ## build docker/Dockerfile on a local Debian base (CPU) and run ich3d --help + tests inside
	docker/build-check.sh

lint: $(STAMP) ## ruff
	$(BIN)/ruff check ich3d tests benchmarks

bench: $(STAMP) ## all benchmarks (prints ratios against baselines measured in the same run)
	$(BIN)/python -m benchmarks.bench_ingest
	$(BIN)/python -m benchmarks.bench_delong
	$(BIN)/python -m benchmarks.bench_train
	$(BIN)/python -m benchmarks.bench_export

bench-scale: $(STAMP) ## every phase at 1/16, 1/4 and full RSNA cardinality (CPU; target: within an hour alone): runs/bench-scale/scale.md
	$(DEMO_ENV) $(BIN)/python -m benchmarks.bench_scale --out runs/bench-scale

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache
