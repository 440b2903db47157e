# Music-intelligence monorepo: MERT (listen), ChatMusician (read/write scores), YuE (sing).
#
#   make demo    set up, build the offline data kit, run each project's main job on its tiny default
#   make test    set up, run the default (CPU) test suite of shared/ and every project
#
# Other targets: setup data test-slurm test-slow handoff lint train-<project>. Each project folder has the same
# targets on its own (make -C mert train CONFIG=configs/tiny.yaml ARGS="optim.lr=1e-3").

SHELL := /bin/bash
PROJECTS := mert chatmusician yue
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
export MUSIC_DATA_DIR ?= $(CURDIR)/data/kit
export PYTHONUNBUFFERED := 1

.PHONY: setup install data demo test test-shared test-slurm test-slow handoff lint clean $(addprefix test-,$(PROJECTS))

setup install:
	@bash shared/scripts/setup.sh --venv $(VENV) shared $(PROJECTS)

data: setup
	$(PY) -m musiccore.data build --root "$(MUSIC_DATA_DIR)"

demo: data
	@for p in $(PROJECTS); do \
	  echo "================ $$p demo ================"; \
	  $(MAKE) --no-print-directory -C $$p demo VENV=$(VENV) || exit 1; \
	done

test: setup
	@rc=0; \
	( cd shared && $(PY) -m pytest -q $(PYTEST_ARGS) ) || rc=1; \
	for p in $(PROJECTS); do ( cd $$p && $(PY) -m pytest -q $(PYTEST_ARGS) ) || rc=1; done; \
	exit $$rc

test-slow: PYTEST_ARGS += --runslow
test-slow: test

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
