# edgecap — two commands do everything on a fresh machine:
#   make demo   create .venv, install, caption a sample image (tiny random model if no real one)
#   make test   install test dependencies, lint, type-check, run the whole suite
# While working: make test-fast (the unit tier: no real model, no servers in subprocesses).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check

.PHONY: demo test test-fast lint typecheck pytest bench bench-rest clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Stamp files: reinstall only when pyproject.toml changes.
$(VENV)/.runtime: pyproject.toml | $(PY)
	@echo "Installing edgecap (first time compiles llama.cpp, ~5 min on 2 cores; pip caches the wheel)"
	$(PIP) install --quiet -e .
	@touch $@

$(VENV)/.test: pyproject.toml | $(PY)
	@echo "Installing edgecap with test dependencies"
	$(PIP) install --quiet -e '.[test]'
	$(PIP) install --quiet --no-deps --target $(VENV)/clients/runware-0.5.24 runware==0.5.24
	$(PIP) install --quiet --no-deps --target $(VENV)/clients/runware-sdk-1.8.0 runware-sdk==1.8.0
	@touch $@ $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(VENV)/bin/edgecap demo

lint: $(VENV)/.test
	$(PY) -m ruff check edgecap tools tests
	$(PY) -m ruff format --check edgecap tools tests

typecheck: $(VENV)/.test
	$(PY) -m mypy

pytest: $(VENV)/.test
	$(PY) -m pytest

test: lint typecheck pytest

# The unit tier (tests marked neither `model` nor `slow`; see pyproject.toml).
test-fast: $(VENV)/.test
	$(PY) -m pytest -m "not model and not slow"

bench: $(VENV)/.runtime
	$(PY) -m tools.bench

bench-rest: $(VENV)/.runtime
	$(PY) -m tools.bench --scenario rest-overhead

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
