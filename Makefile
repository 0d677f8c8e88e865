# One-command set-up: `make run` (default pipeline) and `make test` create .venv from requirements.txt first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: setup run test dry-run clean

$(BIN)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/snakemake --cores $(CORES)

dry-run: setup
	$(BIN)/snakemake -n

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf results .snakemake
