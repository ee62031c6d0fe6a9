# The two commands a person needs are `make run` and `make test`; the rest are their parts.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run terminal test bench gen check-gen install clean-data help style types lint

help:
	@echo "make run    - the whole system on embedded defaults (Postgres, generated master, simulator)"
	@echo "make test   - install, check generated code, run the test suite"
	@echo "make terminal - the terminal app (watchlist, option chain) on the stack of make run"
	@echo "make bench  - benchmarks with figures and ratios"
	@echo "make gen    - regenerate Python code from protos/"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,terminal]'
	touch $(STAMP)

install: $(STAMP)

# Regenerates the protobuf and gRPC modules; output is deterministic for a given protoc.
gen: $(STAMP)
	$(PY) -m services.common.codegen write

# Fails when the committed generated code differs from what protos/ produce.
check-gen: $(STAMP)
	$(PY) -m services.common.codegen check

run: $(STAMP)
	$(PY) -m services.stack

# The terminal app on the local stack (`make run` in another shell); TOKEN= an API key when AUTH_MODE=api_key.
terminal: $(STAMP)
	$(PY) -m terminal $(if $(TOKEN),--token $(TOKEN))

test: $(STAMP) check-gen lint
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m bench

clean-data:
	rm -rf var/

# Style and types: what CI checks before the tests.
LINT_PATHS := services simulator bench tests terminal

style: $(STAMP)
	$(VENV)/bin/ruff format $(LINT_PATHS)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)

types: $(STAMP)
	$(VENV)/bin/mypy

lint: $(STAMP)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy
