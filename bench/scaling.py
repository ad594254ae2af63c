"""make bench, the scaling row: trials per minute with 1, 2 and 4 worker processes, on PostgreSQL
and on the local journal file, same space, same trial budget, one `sweep run --n-jobs N` each.

Needs the PostgreSQL server on 127.0.0.1:5432 (trust auth) that the project's tests use; a
database is created for each run and dropped after it. Figures are ratios against 1 worker on
the same store, measured in this run (the machine is shared and noisy).

Usage: .venv/bin/python bench/scaling.py [--trials 24] [--trees 150]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PG = "postgresql://postgres@127.0.0.1:5432"
SPACE = """\
experiment: scaling
study_name: scaling
estimator: GradientBoostingClassifier
data: {{dataset: breast_cancer}}
metric: roc_auc
cv: 3
seed: 1
n_trials: {trials}
fixed: {{n_estimators: {trees}, random_state: 0}}
params:
  learning_rate: {{type: float, low: 0.05, high: 0.5, log: true}}
  max_depth: {{type: int, low: 2, high: 4}}
"""


def trials_per_minute(storage: str, study: str) -> tuple[int, float]:
    """(completed trials, trials per minute from the first trial's start to the last one's end)."""
    import optuna

    from gbsweep import storages

    trials = [t for t in optuna.load_study(study_name=study, storage=storages.open_storage(storage)).trials
              if t.state.name == "COMPLETE"]
    loop = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return len(trials), len(trials) / loop * 60


def run_sweep(folder: Path, storage: str, jobs: int) -> None:
    study = f"scaling-{jobs}"
    subprocess.run(
        [str(ROOT / ".venv/bin/sweep"), "run", "-q", "--config", str(folder / "space.yaml"),
         "--study-name", study, "--n-jobs", str(jobs), "--storage", storage,
         "--tracking-uri", f"sqlite:///{folder}/mlflow-{uuid.uuid4().hex[:6]}.db"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder,
    )


def postgres_database() -> tuple[str, Callable[[], None]]:
    """A fresh database URL, and the function that drops it."""
    import psycopg2

    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(f"{PG}/test")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return f"{PG}/{name}", drop


def measure(folder: Path, store: str, jobs: int) -> tuple[int, float]:
    if store == "journal":
        storage = str(folder / f"journal-{jobs}.log")
        run_sweep(folder, storage, jobs)
        return trials_per_minute(storage, f"scaling-{jobs}")
    storage, drop = postgres_database()
    try:
        run_sweep(folder, storage, jobs)
        return trials_per_minute(storage, f"scaling-{jobs}")
    finally:
        drop()


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore")  # Optuna's experimental-feature notes about heartbeats
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--trees", type=int, default=150)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "space.yaml").write_text(SPACE.format(trials=args.trials, trees=args.trees))
        print(f"scaling: {args.trials} trials of {args.trees} trees on breast_cancer, cv 3, per run;"
              " trials/min from the first trial's start to the last one's end")
        print(f"{'store':<12}{'workers':>8}{'trials':>8}{'trials/min':>12}{'x 1 worker':>12}")
        for store in ("journal", "postgresql"):
            baseline = None
            for jobs in (1, 2, 4):
                count, rate = measure(folder, store, jobs)
                baseline = baseline or rate
                print(f"{store:<12}{jobs:>8}{count:>8}{rate:>12.1f}{rate / baseline:>12.2f}", flush=True)


if __name__ == "__main__":
    main()
