# `make repro` and `make test` create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install repro test test-fast bench stack-up stack-down clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The whole pipeline on the built-in default (synthetic data), stages run with the venv's python.
repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# pytest-xdist workers for `make test`: a test file runs whole on one of them (tests/conftest.py says why); 1 runs
# the suite serially. `make test-fast` is all CPU, where workers only add their start-up: it runs serially.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# The whole test suite, the end-to-end DVC/MLflow tests included.
test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(XDIST)

# Unit tests only (seconds): skips the end-to-end tests marked slow.
test-fast: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/polycolor bench

# The team stack on loopback (PostgreSQL + S3 + MLflow server; needs PostgreSQL installed): `eval "$$(make -s stack-up)"`
# exports MLFLOW_TRACKING_URI and the login; stack-down stops it and keeps its data (a later stack-up brings the runs
# and artifacts back); `polycolor stack down --purge` discards them.
stack-up: $(STAMP)
	@PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/polycolor stack up

stack-down: $(STAMP)
	@PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/polycolor stack down

clean-venv:
	rm -rf $(VENV)
