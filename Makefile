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
# Where sweep cells write their run folders and where report reads them (empty: the config's runs/).
RUNS ?=
# Sweep cells at once on this machine (empty: the sweep file's local.jobs).
JOBS ?=

# On development and CI machines the data lives beside the checkout; elsewhere set SSL_BENCH_DATA_ROOT.
ifneq ($(wildcard ../shared/data),)
export SSL_BENCH_DATA_ROOT ?= $(abspath ../shared/data)
endif

.PHONY: setup bench sweep report predict test perf gpu-check methods verify clean

setup: $(VENV)/.installed

# torch==2.13.0 first: the CPU wheel (an unpinned torch would pull a multi-GB CUDA build).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

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
	$(SSL_BENCH) data verify --data $(DATA)

test: setup
	WANDB_MODE=disabled $(PY) -m pytest -q tests

perf: setup
	$(PY) -m ssl_bench.perf $(ARGS)

# On a GPU machine: perf of every method, then real cells side by side on the GPU; the table goes to RUNS/gpu-check.md.
gpu-check: setup
	$(PY) -m ssl_bench.gpu_check --data $(DATA) $(if $(RUNS),--runs $(RUNS)) $(ARGS)

clean:
	rm -rf .cache runs
