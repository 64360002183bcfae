# Two commands on a fresh machine:  `make demo` (set up + run the main job)
# and `make test` (set up + lint + every test).  Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, pinned: on the project's machines this is a local CPU wheel; a looser
# spec would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup setup-dev demo test lint format bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.base-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.base-installed
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

setup: $(VENV)/.base-installed
setup-dev: $(VENV)/.dev-installed

demo: setup
	$(BIN)/msam demo

LINTED := msam_core msam_viz tests benchmarks tools notebooks

lint: setup-dev
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/python tools/strip_notebooks.py --check
	$(BIN)/lint-imports --no-cache

format: setup-dev
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/python tools/strip_notebooks.py

test: lint
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/step_cost.py
	$(BIN)/python benchmarks/loop_overhead.py
	$(BIN)/python benchmarks/landscape_speed.py
	$(BIN)/python benchmarks/av_loading.py
	$(BIN)/python benchmarks/method_cost.py

clean-venv:
	rm -rf $(VENV)
