# The two commands a newcomer needs:  make run   and   make test
# Everything else (virtualenv, dependencies, Synapse) is installed from this repository's files.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: run test lint install clean bench bench-ceiling bench-crash

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run: a throwaway Synapse + Alcove on 127.0.0.1 (state in .alcove-dev/), Ctrl-C stops both
run: $(STAMP)
	$(BIN)/alcove dev --state-dir .alcove-dev

## lint: ruff (lint + format check) and mypy (strict, tests included)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## test: lint and types first, then every test on SQLite and PostgreSQL, with a real Synapse.
## TEST_WORKERS pytest-xdist workers (default 2; 0 runs in one process), a file per worker at a
## time (--dist loadfile: a module's own Synapse starts once); each worker starts its own Synapse.
TEST_WORKERS ?= 2
test: lint
	scripts/ensure-postgres
	scripts/ensure-redis
	scripts/ensure-nginx
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

## bench: round-trip benchmark against a throwaway Synapse (not part of test)
bench: $(STAMP)
	$(BIN)/python -m bench.rtt

## bench-ceiling: Alcove against a fast fake homeserver vs one Synapse's event rate (SQLite + PostgreSQL)
bench-ceiling: $(STAMP)
	scripts/ensure-postgres
	$(BIN)/python -m bench.ceiling

## bench-crash: the crash suite (SIGKILLs of Alcove, a Synapse restart, 429/503/dropped connections; exit 1 on any loss or duplicate)
bench-crash: $(STAMP)
	$(BIN)/python -m bench.crash --kills 20

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
