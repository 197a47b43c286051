# Developer entry points for pulseopt-jax.
#
#   make demo   create .venv if needed, install, run examples/demo.py
#   make test   create .venv if needed, install, lint + type check + tests

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

# Only lint the source folders that actually exist in the checkout.
LINT_DIRS := $(wildcard pulseopt_core pulseopt_optax pulseopt_torch tests benchmarks examples notebooks)

.DEFAULT_GOAL := test
.PHONY: venv lint typecheck test demo bench clean
.DELETE_ON_ERROR:

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Everything: torch is pinned to the CPU wheel first so the extras resolution
# does not pull a different build. Re-installs only when pyproject.toml changes.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[torch,flax,notebooks,dev]"
	touch $@ $(DEMO_STAMP)

# The demo needs only the JAX side. Skipping byte-compilation keeps a clean
# clone's first `make demo` short; modules compile on first import instead.
$(DEMO_STAMP): pyproject.toml | $(PY)
	$(PIP) install --no-compile -e ".[flax,notebooks]"
	touch $@

lint: venv
	$(VENV)/bin/ruff check $(LINT_DIRS)
	$(VENV)/bin/ruff format --check $(LINT_DIRS)

typecheck: venv
	$(VENV)/bin/mypy

test: venv
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory typecheck
	$(PY) -m pytest -n 2 -q

demo: $(DEMO_STAMP)
	$(PY) examples/demo.py

bench: venv
	$(PY) benchmarks/run_all.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis benchmarks/out
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
