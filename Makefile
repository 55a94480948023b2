# Every target installs what it needs into .venv/ first, so a fresh clone needs only `make demo`
# or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint format demo clean

# --- Python environment -------------------------------------------------------------------------
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Each part adds what it needs here (node packages, compiled contracts, test images...).
INSTALL_DEPS := $(STAMP)

# --- storage (IPFS) -----------------------------------------------------------------------------

# --- chain (contracts) --------------------------------------------------------------------------

# --- module runtime -----------------------------------------------------------------------------

# --- common targets -----------------------------------------------------------------------------
install: $(INSTALL_DEPS)

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: install
	@bash .ci/demo.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
