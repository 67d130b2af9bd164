# Two commands for a fresh machine: `make demo` (sets up, runs the main job) and `make test`
# (sets up the main venv and the two app venvs, runs every test). Each creates what is missing.
#
# torch is pinned to 2.13.0 (setup.cfg). Which build pip fetches depends on the index it uses:
#   * these build machines: a local wheel mirror already serves the CPU wheel, so the default
#     (TORCH_INDEX_URL empty: pip's own index configuration) is right;
#   * an ordinary Linux machine: PyPI's torch wheel is the CUDA build (gigabytes). Ask for the CPU
#     build with `make demo CPU=1` (the PyTorch CPU index, $(TORCH_CPU_INDEX));
#   * a GPU machine: install the CUDA build you want, e.g.
#     `make demo TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128`, or put torch==2.13.0 into
#     .venv yourself before `make` (it is kept: pip only installs what is missing), then run on the
#     GPU with `--device cuda` (predict, corners) or the bundle's `--device cuda`.
#
# `make demo` installs what the main job needs (the package's install_requires, no test tools);
# `make test`, `make test-main` and `make test-quick` add the `test` extra (pytest, hypothesis,
# jsonschema, itk). The MONAI Label and MONAI Deploy apps live in their own venvs (.venv-label,
# .venv-deploy): installed into .venv they would replace torch / numpy (Label) or change what
# `import monai` loads (Deploy).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
CPU ?= 0
TORCH_INDEX_URL ?=
ifeq ($(CPU),1)
TORCH_INDEX_URL := $(TORCH_CPU_INDEX)
endif
TORCH_PIP_ARGS := $(if $(strip $(TORCH_INDEX_URL)),--index-url $(TORCH_INDEX_URL),)
BASE_STAMP := $(VENV)/.monai-spine-installed
TEST_STAMP := $(VENV)/.monai-spine-test-installed

.PHONY: setup setup-test apps-env demo test test-main test-quick clean-runs

$(BASE_STAMP): setup.cfg setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -e .
	touch $(BASE_STAMP)

$(TEST_STAMP): $(BASE_STAMP)
	$(PY) -m pip install -q -e ".[test]"
	touch $(TEST_STAMP)

# the main job's environment only
setup: $(BASE_STAMP)

# plus the test tools
setup-test: $(TEST_STAMP)

# the app venvs (idempotent scripts: seconds when already built)
apps-env:
	PYTHON=$(PYTHON) scripts/deploy_env.sh
	PYTHON=$(PYTHON) scripts/label_env.sh

demo: $(BASE_STAMP)
	$(VENV)/bin/monai-spine demo $(DEMO_ARGS)

# every test, the app servers included (they fail instead of skipping when their venv is missing)
test: $(TEST_STAMP) apps-env
	MONAI_SPINE_REQUIRE_APPS=1 $(PY) -m pytest -q $(PYTEST_ARGS)

# the main venv's tests only (app tests skip when their venvs are absent)
test-main: $(TEST_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# the quick tests (a few minutes): everything not marked slow, main venv only
test-quick: $(TEST_STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean-runs:
	rm -rf runs .cache
