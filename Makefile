# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LLAMA_SERVER := $(BIN)/llama-server

.PHONY: install demo up test lint

# llama-cpp-python compiles llama.cpp with the flags of scripts/llama-cmake-args.sh (a portable build);
# ensure-llama-build.sh rebuilds it when pip took an AVX-512/AMX wheel from its cache instead.
$(STAMP): pyproject.toml scripts/llama-cmake-args.sh scripts/ensure-llama-build.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	CMAKE_ARGS="$$(bash scripts/llama-cmake-args.sh)" $(BIN)/pip install -e '.[dev]'
	VENV=$(VENV) bash scripts/ensure-llama-build.sh
	touch $(STAMP)

# llama.cpp's own server for the llamacpp backend, built from the llama.cpp that llama-cpp-python vendors.
$(LLAMA_SERVER): $(STAMP) scripts/build-llama-server.sh scripts/llama-cmake-args.sh
	VENV=$(VENV) bash scripts/build-llama-server.sh

install: $(STAMP) $(LLAMA_SERVER)

demo: install
	$(BIN)/distillery demo

up: install
	$(BIN)/distillery up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	VENV=$(VENV) bash scripts/typecheck.sh
	VENV=$(VENV) bash scripts/validate-deploy.sh

test: lint $(LLAMA_SERVER)
	$(BIN)/python -m pytest
