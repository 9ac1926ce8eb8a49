# Two entry points (see README): `make repro` runs the study, `make test` runs the checks.
VENV := .venv
# The interpreter the venv is made from: any CPython 3.11-3.13 (`make repro PYTHON=python3.12`).
PYTHON ?= python3
NOTEBOOK := notebooks/analysis.ipynb
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# mkdocs-material prints a banner about its successor on every build otherwise.
export NO_MKDOCS_2_WARNING := 1

.PHONY: setup lock repro test docs notebook ui server gpu-bundle

# The locked environment: every package at the version and file hash of requirements.lock (pip picks the
# files for this Python and platform), then the project itself.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	# pip compiles every module now (not --no-compile): where PYTHONDONTWRITEBYTECODE is set, as on the
	# reference and CI machines, Python never writes a .pyc itself, and every stage would compile its imports.
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# After a pin in pyproject.toml changes: uv resolves once for every Python and platform of [tool.uv] (uv.lock,
# keeping the other versions) and exports it for pip with the hash of every file of each version.
lock: setup
	uv lock
	uv export --format requirements-txt --extra dev --no-emit-project --frozen --quiet -o requirements.lock

repro: setup
	dvc repro

test: setup
	ruff check .
	ruff format --check .
	pytest

# The documentation site in site/ (strict: a dead link or a page out of step with the code fails).
docs: setup
	mkdocs build --strict

# Re-executes the analysis notebook on this checkout's study (after `make repro`); the site shows its outputs.
notebook: setup
	python -c "import nbclient, nbformat; nb = nbformat.read('$(NOTEBOOK)', 4); \
	nbclient.NotebookClient(nb, timeout=600, resources={'metadata': {'path': 'notebooks'}}).execute(); \
	nbformat.write(nb, '$(NOTEBOOK)')"

# Prints the address of the study's runs table, then serves the UI there.
ui: setup
	python -m pipeline ui

# A tracking server over the same store, for several `dvc queue` workers at once (README, MLflow).
# Without MLflow's GenAI job runners: 8 more processes that each import MLflow, for jobs no stage submits.
server: setup
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --artifacts-destination $(CURDIR)/mlartifacts \
		--host 127.0.0.1 --port 5000

# .gpu/: the wheels and data benchmarks/gpu_run.py needs on a GPU machine without a package registry.
gpu-bundle: setup
	python tools/gpu_bundle.py
