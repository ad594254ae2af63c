# make run: venv + install + the default sweep on embedded stores.  make test: same set-up + tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/sweep run

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) mlflow.db mlartifacts optuna.journal* *.egg-info
