# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo up test lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/distillery demo

up: $(STAMP)
	$(BIN)/distillery up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	VENV=$(VENV) bash scripts/typecheck.sh
	VENV=$(VENV) bash scripts/validate-deploy.sh

test: lint
	$(BIN)/python -m pytest
