# make demo: set everything up and show netstats on an embedded example (offline, seconds).
# make test: set everything up, then lint, type-check and run the whole suite (on .venv's Python).
# make test-all: make test, then the whole suite on every other supported CPython (noxfile.py).
# make docs: the documentation site (docs/, mkdocs.yml) into site/, offline, warnings as errors.
# The suite runs in parallel: 4 workers (pytest-xdist; tests/conftest.py says which tests share
# one), then the few that need the machine alone in one process. On 2 cores, 4 pay: most tests
# wait on a server, a subprocess or a sleep. PARALLEL= runs the first step in one process too.
PYTHON ?= python3
PARALLEL ?= -n 4 --dist loadgroup
VENV := .venv
BIN := $(VENV)/bin
HASH := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
CORE := $(VENV)/.core-$(HASH)
STAMP := $(VENV)/.installed-$(HASH)

.PHONY: all venv demo test test-others test-all lint bench clean docs

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

# In two steps: the suite on the workers, then what needs the machine alone (tests/conftest.py).
test: lint
	$(BIN)/python -m pytest $(PARALLEL) -m "not alone"
	$(BIN)/python -m pytest -m alone

# One fresh virtual environment per version, under .nox/, built from the project's files.
test-others: $(STAMP)
	$(BIN)/nox --session others -- $(PARALLEL)

test-all: test test-others

# Wall-clock ratios against stock (noisy on a shared machine), then what load cannot move:
# instructions per connection, per call with a callback, per census sweep, and against the
# tracing tools (the bench extra: OpenTelemetry, sentry-sdk; nothing is sent).
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python bench/sockets.py
	$(BIN)/python bench/connections.py
	$(BIN)/python bench/instructions.py
	$(BIN)/python bench/chatty_instructions.py --only own wrapped callback tagged
	$(BIN)/python bench/census.py
	$(BIN)/python bench/peers.py

# The documentation site, built offline into site/; any warning (a link, an anchor, a page) fails it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .nox build site src/*.egg-info
