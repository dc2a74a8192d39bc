# ssl-bench front door. `make setup` once (every target depends on it), then e.g.
#   make bench METHOD=supervised FRAC=0.1
#   make test
#   make sweep SWEEP=smoke RUNS=/tmp/runs && make report RUNS=/tmp/runs
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SSL_BENCH := $(VENV)/bin/ssl-bench

METHOD ?= supervised
FRAC ?= 0.1
DATA ?= hippocampus
DRAW ?= 0
STEPS ?=
ARGS ?=
SWEEP ?= hippocampus
# Where sweep cells write their run folders and where report reads them (empty: the config's runs/); report writes
# into RUNS/report (RUNS=results/records: the committed results/; ARGS="--out DIR" elsewhere).
RUNS ?=
# Sweep cells at once on this machine (empty: the sweep file's local.jobs).
JOBS ?=

# Data roots, the first holding a dataset's folder wins: data/ (what `make data-la` converts) and, on development and
# CI machines, the shared copy beside the checkout; elsewhere set SSL_BENCH_DATA_ROOT.
ifneq ($(wildcard ../shared/data),)
export SSL_BENCH_DATA_ROOT ?= $(abspath data):$(abspath ../shared/data)
else
export SSL_BENCH_DATA_ROOT ?= $(abspath data)
endif
# The Left Atrium folder in UA-MT's layout (make data-la): half resolution here; a full-resolution folder with
# LA_ARGS="--name la --downsample 2" gives the same files.
LA_DIR ?= ../shared/data/LA_half
LA_ARGS ?= --name la_half

.PHONY: setup data-la bench sweep report predict test perf gpu-check methods verify clean

setup: $(VENV)/.installed

# torch==2.13.0 first: the CPU wheel (an unpinned torch would pull a multi-GB CUDA build).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

data-la: setup
	$(SSL_BENCH) data import-uamt $(LA_DIR) --root data $(LA_ARGS)

bench: setup
	$(SSL_BENCH) train --method $(METHOD) --data $(DATA) data.fraction=$(FRAC) data.draw=$(DRAW) \
		$(if $(STEPS),trainer.max_steps=$(STEPS)) $(ARGS)

sweep: setup
	$(SSL_BENCH) sweep experiments/sweeps/$(SWEEP).yaml $(if $(RUNS),run.runs_dir=$(RUNS)) $(if $(JOBS),--jobs $(JOBS)) $(ARGS)

report: setup
	$(SSL_BENCH) report $(RUNS) $(ARGS)

# Label maps of new images by a trained run, e.g. make predict RUN=runs/hippocampus/mean_teacher/frac0.1/draw0
# IMAGES="a.nii.gz b.nii.gz" OUT=predictions (ARGS: --checkpoint best, --model student, --device cpu).
predict: setup
	$(SSL_BENCH) predict $(RUN) $(IMAGES) --out $(OUT) $(ARGS)

methods: setup
	@$(SSL_BENCH) methods

verify: setup
	$(SSL_BENCH) data verify --data $(DATA) $(ARGS)

test: setup
	WANDB_MODE=disabled $(PY) -m pytest -q tests

perf: setup
	$(PY) -m ssl_bench.tools.perf $(ARGS)

# On a GPU machine: perf of every method, then real cells side by side on the GPU; the table goes to RUNS/gpu-check.md.
gpu-check: setup
	$(PY) -m ssl_bench.tools.gpu_check --data $(DATA) $(if $(RUNS),--runs $(RUNS)) $(ARGS)

clean:
	rm -rf .cache runs
