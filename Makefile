# Two commands set up a fresh machine and run the project:
#   make train   # install into .venv, then the main job: `mixerlab train` on the embedded corpus
#   make test    # install into .venv, then the whole test suite (what CI runs)
# TORCH_SPEC pins the CPU build of PyTorch where a local wheel exists; override it for CUDA, e.g.
#   make install TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.mixerlab-installed

.PHONY: install train test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench,launchers,dashboard]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/mixerlab train $(ARGS)

# Tests run in parallel worker processes (pytest-xdist), one per core up to PYTEST_WORKERS.
PYTEST_WORKERS ?= 4
PYTEST := $(BIN)/python -m pytest -q -n auto --maxprocesses $(PYTEST_WORKERS)

test: $(STAMP)
	$(PYTEST) $(ARGS)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/mixerlab bench $(ARGS)

clean:
	rm -rf $(VENV) runs outputs multirun .pytest_cache .ruff_cache
