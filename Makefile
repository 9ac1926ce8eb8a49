# Two entry points (see README): `make repro` runs the study, `make test` runs the checks.
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test ui

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

repro: setup
	dvc repro

test: setup
	ruff check .
	ruff format --check .
	pytest

ui: setup
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db
