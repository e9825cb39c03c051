# Two set-up commands, each works on a fresh machine (Python 3.11, nothing installed):
#   make pipeline   the whole pipeline on PickLoose-v1 (the task where history decides), preset=quick
#   make test       the test suite (with the Isaac Lab tests where Python 3.12 exists; ISAACLAB=0 skips them)
# Isaac Lab 3.0 (optional, Python 3.12, its own venv .venv-isaaclab; docs/isaaclab.md):
#   make isaaclab        create that venv (about 2.5 minutes and 7.8 GB: isaaclab pins a CUDA torch, which runs on CPU)
#   make test-isaaclab   the Isaac Lab tests alone, kit-less on Newton, on the CPU
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=
# The main job's env: PickLoose-v1 with its teacher recipe, and collection balanced to half the kept
# episodes with a failed attempt (unbalanced, a quick run kept 35%). Here rather than in
# configs/config.yaml so that `python pipeline.py ...` (and every command and test written for it)
# keeps Lift as its default. ARGS come last and win; one that names an env (env=lift) or a teacher
# (teacher=scripted) also drops the defaults that belong to PickLoose. (collect.workers>1 needs
# collect.retry_share_target=null.)
PIPELINE_DEFAULTS = $(if $(filter env=%,$(ARGS)),,env=pick_loose collect.retry_share_target=0.5 \
	$(if $(filter teacher=%,$(ARGS)),,teacher=ppo_pick_loose))

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: this takes the local CPU build; anything else downloads a CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# robomimic 0.3.0 for tests/test_hdf5.py without its declared deps (torch and torchvision: a CUDA torch
	# download); six it needs but does not declare
	$(PY) -m pip install --quiet --no-deps robomimic==0.3.0 six termcolor psutil tqdm
	touch $@

# Isaac Lab needs Python 3.12: the first python3.12 that runs (pyenv's shims answer even where 3.12 is
# not selected), else pyenv's own 3.12 build; PYTHON312=/path/to/python3.12 overrides.
PYTHON312 ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo $$p; break; }; done)
ISAACLAB_VENV := .venv-isaaclab
ISAACLAB_PY := $(ISAACLAB_VENV)/bin/python

$(ISAACLAB_VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON312)" || { echo "make isaaclab: Isaac Lab 3.0 needs Python 3.12 and none was found; install it \
	(e.g. pyenv install 3.12) or pass PYTHON312=/path/to/python3.12"; exit 2; }
	test -x $(ISAACLAB_PY) || $(PYTHON312) -m venv $(ISAACLAB_VENV)
	$(ISAACLAB_PY) -m pip install --quiet --upgrade pip
	# isaaclab==3.0.0 pins its own torch (2.11.0), mujoco (3.12) and warp; nothing here fights those pins.
	# --no-cache-dir: pip's cache would keep a second copy of the ~4 GB of CUDA wheels beside the venv
	# (a CI run ran out of disk in this step, 2026-12-07)
	$(ISAACLAB_PY) -m pip install --quiet --no-cache-dir -e '.[isaaclab,dev]'
	touch $@

.PHONY: pipeline test bench isaaclab test-isaaclab
pipeline: $(VENV)/.installed
	OMP_WAIT_POLICY=PASSIVE $(PY) pipeline.py stage=all preset=quick $(PIPELINE_DEFAULTS) $(ARGS)

# The core suite, then the Isaac Lab tests (kit-less on the CPU, in .venv-isaaclab: created on first use)
# where Python 3.12 exists; ISAACLAB=0 skips them.
ISAACLAB ?= 1
test: $(VENV)/.installed
	$(PY) -m ruff check .
	OMP_WAIT_POLICY=PASSIVE MUJOCO_GL=egl $(PY) -m pytest tests $(ARGS)
ifeq ($(ISAACLAB),1)
	@if [ -n "$(PYTHON312)" ]; then $(MAKE) --no-print-directory test-isaaclab; \
	else echo "make test: Isaac Lab tests skipped: no Python 3.12 (install it, or pass PYTHON312=...)"; fi
endif

isaaclab: $(ISAACLAB_VENV)/.installed

test-isaaclab: $(ISAACLAB_VENV)/.installed
	OMP_WAIT_POLICY=PASSIVE $(ISAACLAB_PY) -m pytest tests/isaaclab $(ARGS)

bench: $(VENV)/.installed
	$(PY) bench/env_throughput.py
