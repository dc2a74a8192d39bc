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

.PHONY: setup data-la bench sweep report predict test perf gpu-check gpu-carry gpu-evidence gpu-land methods verify clean

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

# GPU windows (README "GPU windows"). Here, before a window: `make gpu-carry` fills $(CARRY) with the wheels and the
# queued data a bare GPU machine lacks, checked to travel. There: `make gpu-evidence OUT=<folder>` runs the queue's
# next cells within BUDGET seconds (BUNDLE=<an earlier OUT> goes on from it). Back here: `make gpu-land BUNDLE=<OUT>`.
QUEUE ?= default
BUDGET ?= 480
OUT ?=
BUNDLE ?=
CARRY ?= .carry
# On a GPU machine without this project's venv: its python3 (which has torch and lightning), with the carried wheels.
EVIDENCE_PY := $(if $(wildcard $(PY)),$(PY),python3)
EVIDENCE_SITE := /tmp/ssl-bench-site

gpu-carry: setup
	$(SSL_BENCH) evidence carry --queue $(QUEUE) --out $(CARRY) $(ARGS)

gpu-evidence:
	@test -n "$(OUT)" || { echo "make gpu-evidence: give OUT=<folder> (the bundle comes back there)"; exit 2; }
	@if [ -d "$(CARRY)/wheels" ] && ! $(EVIDENCE_PY) -c "import monai, nibabel, omegaconf, submitit" 2>/dev/null; then \
		$(EVIDENCE_PY) -m pip install -q --no-index --no-deps --no-compile --target $(EVIDENCE_SITE) $(CARRY)/wheels/*.whl; fi
	PYTHONPATH=$(CURDIR):$(EVIDENCE_SITE)$${PYTHONPATH:+:$$PYTHONPATH} $(EVIDENCE_PY) -m ssl_bench.cli evidence run \
		--queue $(QUEUE) --budget $(BUDGET) --out $(OUT) $(if $(BUNDLE),--bundle $(BUNDLE)) \
		$(if $(wildcard $(CARRY)),--carry $(CARRY)) $(ARGS)

gpu-land: setup
	@test -n "$(BUNDLE)" || { echo "make gpu-land: give BUNDLE=<folder> (a window's OUT)"; exit 2; }
	$(SSL_BENCH) evidence land $(BUNDLE) $(ARGS)

clean:
	rm -rf .cache runs
