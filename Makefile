# Music-intelligence monorepo: MERT (listen), ChatMusician (read/write scores), YuE (sing).
#
#   make demo    set up, build the offline data kit, run each project's main job on its tiny default
#   make test    set up, run the default (CPU) test suite of shared/ and every project
#
# Other targets: setup lock lock-check data test-slurm test-slow test-gpu handoff lint train-<project>. Each project folder
# has the same targets on its own (make -C mert train CONFIG=configs/tiny.yaml ARGS="optim.lr=1e-3").

SHELL := /bin/bash
PROJECTS := mert chatmusician yue
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
export MUSIC_DATA_DIR ?= $(CURDIR)/data/kit
export PYTHONUNBUFFERED := 1

.PHONY: setup install lock lock-check data demo test test-shared test-slurm test-slow test-gpu test-fairseq handoff lint clean $(addprefix test-,$(PROJECTS))

setup install:
	@bash shared/scripts/setup.sh --venv $(VENV) --lock requirements.lock shared $(PROJECTS)

# The locks (requirements.lock here and in each project; shared/scripts/lock.py): `make lock` rewrites them from the
# pyprojects keeping the old pins that still fit (UPGRADE=1: newest allowed); `make lock-check` (the first step of
# `make test`) fails when a pyproject's dependencies changed without `make lock`.
lock:
	$(if $(wildcard $(PY)),$(PY),python3) shared/scripts/lock.py compile $(if $(UPGRADE),--upgrade)

lock-check:
	@python3 shared/scripts/lock.py check

# SONGS: sung songs in the kit. Unset: as many as the kit already has, 20 for a new kit (fast `make demo`); the
# LMs want more: `make data SONGS=300` (parallel and resumable; time in README "data kit").
SONGS ?=
data: setup
	$(PY) -m musiccore.data build --root "$(MUSIC_DATA_DIR)" $(if $(SONGS),--songs $(SONGS))

demo: data
	@for p in $(PROJECTS); do \
	  echo "================ $$p demo ================"; \
	  $(MAKE) --no-print-directory -C $$p demo VENV=$(VENV) || exit 1; \
	done

test: lock-check setup
	@rc=0; \
	( cd shared && $(PY) -m pytest -q $(PYTEST_ARGS) ) || rc=1; \
	for p in $(PROJECTS); do ( cd $$p && $(PY) -m pytest -q $(PYTEST_ARGS) ) || rc=1; done; \
	exit $$rc

test-slow: PYTEST_ARGS += --runslow
test-slow: test

# GPU smoke suite (tests marked gpu, docs/cluster.md "GPU smoke suite"): short real runs on one CUDA device. Without
# CUDA every one skips with the reason and the target passes. pytest's "no tests collected" (5) counts as a pass.
test-gpu: setup
	@rc=0; \
	for d in shared $(PROJECTS); do \
	  ( cd $$d && $(PY) -m pytest -q -rs -m gpu $(PYTEST_ARGS); s=$$?; [ $$s -eq 0 ] || [ $$s -eq 5 ] ) || rc=1; \
	done; \
	exit $$rc

# MERT's converter against real fairseq (optional extra; its wheel is built once into $MUSIC_CACHE_DIR/wheels and
# reused; skips with a printed reason when it cannot be built). A CI step of its own: make test-fairseq
test-fairseq: setup
	$(MAKE) --no-print-directory -C mert test-fairseq VENV=$(VENV)

# Starts the local single-node Slurm (as root), then runs the tests marked slurm.
test-slurm: setup
	bash shared/scripts/slurm-local.sh start
	@rc=0; \
	for d in shared $(PROJECTS); do \
	  ( cd $$d && $(PY) -m pytest -q -m slurm $(PYTEST_ARGS); s=$$?; [ $$s -eq 0 ] || [ $$s -eq 5 ] ) || rc=1; \
	done; \
	exit $$rc

handoff:
	@for p in $(PROJECTS); do $(MAKE) --no-print-directory -C $$p handoff || exit 1; done

lint: setup
	@for p in $(PROJECTS); do $(MAKE) --no-print-directory -C $$p lint VENV=$(VENV) || exit 1; done

train-%: setup
	$(MAKE) -C $* train VENV=$(VENV) CONFIG=$(CONFIG) ARGS="$(ARGS)"

clean:
	rm -rf $(VENV) data/kit */runs
