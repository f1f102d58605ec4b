# Two entry points for a fresh machine: `make demo` (install + a real training run) and
# `make test` (install + the whole test suite). torch is pinned here for development and
# CI (the CPU build installs from local disk); the package metadata accepts a range.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test lint format

install:
	$(PIP) install --quiet --disable-pip-version-check -r requirements-dev.txt
	@# ArviZ 1.x declares Python >= 3.12 but runs on 3.11; there, add its packages alone
	@# (their dependencies came with the arviz extra above).
	if $(PYTHON) -c 'import sys; sys.exit(sys.version_info >= (3, 12))'; then \
	  $(PIP) install --quiet --disable-pip-version-check --no-deps --ignore-requires-python \
	    -r requirements-arviz-py311.txt; fi

demo: install
	svi-torch train

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check . && lint-imports --no-cache

format:
	$(PYTHON) -m ruff format . && $(PYTHON) -m ruff check --fix .
