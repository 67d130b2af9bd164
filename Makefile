# Two commands for a fresh machine: `make demo` (sets up, runs the main job) and `make test`
# (sets up the main venv and the two app venvs, runs every test). Each creates what is missing.
# torch is pinned to the CPU wheel 2.13.0 (see setup.cfg). The MONAI Label and MONAI Deploy apps
# live in their own venvs (.venv-label, .venv-deploy): installed into .venv they would replace
# torch / numpy (Label) or change what `import monai` loads (Deploy).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.monai-spine-installed

.PHONY: setup apps-env demo test test-main clean-runs

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# the app venvs (idempotent scripts: seconds when already built)
apps-env:
	PYTHON=$(PYTHON) scripts/deploy_env.sh
	PYTHON=$(PYTHON) scripts/label_env.sh

demo: $(STAMP)
	$(VENV)/bin/monai-spine demo $(DEMO_ARGS)

# every test, the app servers included (they fail instead of skipping when their venv is missing)
test: $(STAMP) apps-env
	MONAI_SPINE_REQUIRE_APPS=1 $(PY) -m pytest -q $(PYTEST_ARGS)

# the main venv's tests only (app tests skip when their venvs are absent)
test-main: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean-runs:
	rm -rf runs .cache
