# make run: venv + install + the default sweep on embedded stores.  make test: same set-up + tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/sweep run

test: $(STAMP)
# The browser test drives Debian's chromium: Playwright's own browser downloads are not used.
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "make: chromium could not be installed; the browser test will be skipped"
	$(BIN)/python -m pytest

# ruff (style, imports, bugbear, pyupgrade) and mypy over the modules; .ci/run runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts optuna.journal* *.egg-info

# make bench: the anytime bench (time to the same score: the glue, HalvingRandomSearchCV, FLAML), then sweep against
# the bare floor and the usual alternatives per trial, scaling, and --from.
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/anytime.py --budget-scale 0.8   # how soon each tool hands over a good model, same wall budget (~50 min)
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/scaling.py   # workers on PostgreSQL vs the journal file (needs the local PostgreSQL)
	$(BIN)/python bench/from_study.py     # run --from: new trials to beat the old best, continued vs fresh (~10 min)
	$(BIN)/python bench/slowlink.py   # the cost per trial with the mlflow server, then the whole host, 50 ms away (~8 min)

# make chaos: random SIGKILLs on `sweep run --n-jobs 2`, its recorder and workers and a `sweep worker`
# for 20 kills, then counts from the stores what survived (a few minutes; not part of make test).
.PHONY: chaos
chaos: $(STAMP)
	$(BIN)/python bench/chaos.py
