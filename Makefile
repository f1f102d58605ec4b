# Two entry points for a fresh machine: `make demo` (install + a real training run) and
# `make test` (install + the whole test suite). torch is pinned here for development and
# CI (the CPU build installs from local disk); the package metadata accepts a range.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test lint format

install:
	$(PIP) install --quiet --disable-pip-version-check -r requirements-dev.txt

demo: install
	svi-torch train

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff format . && $(PYTHON) -m ruff check --fix .
