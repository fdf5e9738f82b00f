# make demo: set everything up and show netstats on an embedded example (offline, seconds).
# make test: set everything up, then lint, type-check and run the whole suite (on .venv's Python).
# make test-all: make test, then the whole suite on every other supported CPython (noxfile.py).
# The suite runs in parallel: 4 workers (pytest-xdist; tests/conftest.py says which tests share
# one). On 2 cores, 4 pay: most tests wait on a server, a subprocess or a sleep. PARALLEL= runs
# it in one process.
PYTHON ?= python3
PARALLEL ?= -n 4 --dist loadgroup
VENV := .venv
BIN := $(VENV)/bin
HASH := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
CORE := $(VENV)/.core-$(HASH)
STAMP := $(VENV)/.installed-$(HASH)

.PHONY: all venv demo test test-others test-all lint bench clean

all: test

# The core alone (stdlib only: seconds) for the demo; the test and dev tools on top for the rest.
$(CORE): pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $(CORE)

$(STAMP): $(CORE)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(CORE)
	$(BIN)/netstats demo

lint: $(STAMP)
	$(BIN)/ruff format --check src tests bench noxfile.py
	$(BIN)/ruff check src tests bench noxfile.py
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest $(PARALLEL)

# One fresh virtual environment per version, under .nox/, built from the project's files.
test-others: $(STAMP)
	$(BIN)/nox --session others -- $(PARALLEL)

test-all: test test-others

bench: $(STAMP)
	$(BIN)/python bench/sockets.py
	$(BIN)/python bench/connections.py
	$(BIN)/python bench/census.py

clean:
	rm -rf $(VENV) .nox build src/*.egg-info
