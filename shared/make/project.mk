# Uniform targets of every project (mert, chatmusician, yue). Included by each project's Makefile:
#
#   PROJECT := mert
#   include ../shared/make/project.mk
#
# Targets: install test demo train train-slurm lint handoff (plus data, lock, lock-check, test-slow, test-slurm, test-gpu).
# Variables: CONFIG=<yaml> picks a config, ARGS="key=value ..." passes overrides, VENV=<dir> the environment,
# NPROC=<n> processes for `make train` (default: the number of local GPUs, 1 without one).
# Inside the monorepo the root .venv is used; a project folder taken alone (make handoff) builds its own.

SHELL := /bin/bash
PROJECT_DIR := $(abspath $(dir $(firstword $(MAKEFILE_LIST))))
SHARED := $(abspath $(PROJECT_DIR)/../shared)
REPO := $(abspath $(SHARED)/..)
VENV ?= $(if $(wildcard $(REPO)/.git),$(REPO)/.venv,$(PROJECT_DIR)/.venv)
PY := $(VENV)/bin/python
CONFIG ?= configs/tiny.yaml
ARGS ?=
PYTEST_ARGS ?=
export MUSIC_DATA_DIR ?= $(REPO)/data/kit
export MUSIC_RUNS_DIR ?= $(PROJECT_DIR)/runs
export PYTHONUNBUFFERED := 1

.PHONY: install setup lock lock-check test test-slow test-slurm test-gpu demo train train-slurm lint handoff data help

help:
	@echo "$(PROJECT): make install | test | demo | train [CONFIG=..] [ARGS='k=v ...'] | train-slurm | lint | handoff"

# Idempotent: re-runs only when a pyproject.toml or the lock changed (stamp inside the venv). A project on its own
# (make handoff) installs exactly its requirements.lock (torch's build per machine: CPU, or CUDA where nvidia-smi
# works). Inside the monorepo the shared .venv holds every project and is set up from the root lock by the root
# Makefile: one project's lock there would move versions another project needs (chatmusician's gradio wants pillow<13).
ifeq ($(abspath $(VENV)),$(REPO)/.venv)
install setup:
	@$(MAKE) --no-print-directory -C $(REPO) setup
else
install setup:
	@bash $(SHARED)/scripts/setup.sh --venv "$(VENV)" --lock $(PROJECT_DIR)/requirements.lock $(SHARED) $(PROJECT_DIR)
endif

data: install
	$(PY) -m musiccore.data build --root "$(MUSIC_DATA_DIR)"

# The project's lock: `make lock` rewrites it (UPGRADE=1: newest versions allowed); `make lock-check` (first step of
# `make test`) fails when the pyprojects' dependencies changed without `make lock`.
lock:
	$(if $(wildcard $(PY)),$(PY),python3) $(SHARED)/scripts/lock.py compile $(if $(UPGRADE),--upgrade) $(PROJECT_DIR)

lock-check:
	@python3 $(SHARED)/scripts/lock.py check $(PROJECT_DIR)

test: lock-check install
	cd $(PROJECT_DIR) && $(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: install
	cd $(PROJECT_DIR) && $(PY) -m pytest -q --runslow $(PYTEST_ARGS)

test-slurm: install
	cd $(PROJECT_DIR) && $(PY) -m pytest -q -m slurm $(PYTEST_ARGS)

# Tests marked gpu (one CUDA device; each skips with its reason without one, and the target still passes).
test-gpu: install
	cd $(PROJECT_DIR) && $(PY) -m pytest -q -rs -m gpu $(PYTEST_ARGS)

# torchrun with one process per local GPU (one process on a CPU machine); NPROC=... overrides.
NPROC ?= $(shell n=$$(nvidia-smi -L 2>/dev/null | grep -c ^GPU); [ "$$n" -gt 0 ] 2>/dev/null && echo $$n || echo 1)
train: install
	cd $(PROJECT_DIR) && $(PY) -m torch.distributed.run --standalone --nproc-per-node=$(NPROC) \
	  -m $(PROJECT).cli train --config $(CONFIG) $(ARGS)

train-slurm: install
	cd $(PROJECT_DIR) && $(PY) -m musiccore.slurm submit --project $(PROJECT) --config $(CONFIG) $(if $(ARGS),-- $(ARGS))

lint: install
	cd $(PROJECT_DIR) && $(PY) -m compileall -q src tests && $(PY) -m pytest -q tests/test_imports.py

# Copy this project and shared/ into a temporary folder, install there from scratch, run the tests.
handoff:
	@bash $(SHARED)/scripts/handoff.sh $(PROJECT)

# The project's main job on its tiny default, end to end (builds the data kit first).
demo: data
	cd $(PROJECT_DIR) && $(VENV)/bin/$(PROJECT) demo $(ARGS)
