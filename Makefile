# Two commands for a fresh machine: `make demo` (sets up, runs the main job) and `make test`.
# Each creates .venv when missing. torch is pinned to the CPU wheel 2.13.0 (see setup.cfg).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.monai-spine-installed

.PHONY: setup demo test clean-runs

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/monai-spine demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean-runs:
	rm -rf runs .cache
