# The two commands a user needs: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test lint format token clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Start the whole system on the embedded default (SQLite stores, local nats-server if needed).
run: $(STAMP)
	$(PY) -m shared run

## Run the whole test suite (PostgreSQL tests run when PostgreSQL is reachable).
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## The lint gate CI runs too.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy shared services

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## Mint a token for a local actor: make token SUB=alice
token: $(STAMP)
	@$(PY) -m shared token $(or $(SUB),admin)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
