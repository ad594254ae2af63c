"""`sweep run --from OLD`: which old trials a new study starts with, through the CLI, against real
stores; what the user sees in the summary, in `sweep best` and in the MLflow runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from test_sweep import load_study, run_cli, runs_of, sweep_args

from conftest import ROOT, cli_in, small_space

OLD = """\
experiment: carry
study_name: {study}
estimator: GradientBoostingClassifier
data: {{dataset: breast_cancer, holdout: 0.25}}
metric: roc_auc
cv: 2
seed: 7
sampler: random
n_trials: {n_trials}
fixed: {{n_estimators: 8, random_state: 0}}
params:
  learning_rate: {{type: float, low: 0.05, high: 0.5, log: true}}
  max_depth: {{type: int, low: 1, high: 3}}
"""


def space(tmp_path, name: str, n_trials: int, text: str = OLD) -> str:
    return str(small_space(tmp_path, study=name, text=text.format(study=name, n_trials=n_trials)))


@pytest.fixture(scope="module")
def old_stores(tmp_path_factory) -> Path:
    """A finished study 'old' of 8 random trials, run once for the module: the folder of its stores."""
    root = tmp_path_factory.mktemp("old")
    stores = {"tracking_uri": f"sqlite:///{root}/mlflow.db", "storage": str(root / "optuna.journal")}
    code, _, err = cli_in(root, *sweep_args(space(root, "old", 8), stores))
    assert code == 0, err
    return root


@pytest.fixture
def old(old_stores, stores) -> list[optuna.trial.FrozenTrial]:
    """The study 'old' in this test's stores (a copy: a test may add to them): what the new studies
    continue from. Its runs' artifacts stay in the module's folder."""
    shutil.copyfile(old_stores / "mlflow.db", stores["tracking_uri"].removeprefix("sqlite:///"))
    shutil.copyfile(old_stores / "optuna.journal", stores["storage"])
    return load_study(stores, "old").trials


def continue_from_old(tmp_path, stores, capsys, text: str, n_trials: int, *extra: str) -> tuple[int, str]:
    code, out, err = run_cli(capsys, *sweep_args(space(tmp_path, "new", n_trials, text), stores, "--from", "old",
                                                 *extra))
    return code, err


def test_fitting_trials_are_carried_counted_and_shown_as_child_runs(tmp_path, stores, capsys, old):
    # learning_rate narrowed: only some old trials fit; subsample is new: its default 1.0 fits
    new = OLD.replace("high: 0.5, log", "high: 0.15, log") + "  subsample: {{type: float, low: 0.5, high: 1.0}}\n"
    fitting = [t for t in old if t.params["learning_rate"] <= 0.15]
    assert 0 < len(fitting) < len(old), "the old study must have trials on both sides of the new high"
    code, err = continue_from_old(tmp_path, stores, capsys, new, len(fitting) + 2)
    assert code == 0, err
    assert (f"study 'new': {len(fitting)} trials carried over from 'old', 2 ran now,"
            f" {len(fitting) + 2} of {len(fitting) + 2} counted.") in err

    study = load_study(stores, "new")
    carried = study.trials[:len(fitting)]  # numbers 0..k-1: added before the first new trial
    assert [t.user_attrs["sweep.from_trial"] for t in carried] == [t.number for t in fitting]
    for then, now in zip(fitting, carried, strict=True):
        assert now.params == {**then.params, "subsample": 1.0}
        assert (now.state, now.value, now.intermediate_values) == (then.state, then.value, then.intermediate_values)
        assert now.datetime_start == then.datetime_start
    assert all("sweep.from_trial" not in t.user_attrs for t in study.trials[len(fitting):])

    parents, children = runs_of(stores["tracking_uri"], "carry")
    new_parent = next(p for p in parents if p.info.run_name == "new")
    runs = {int(r.data.tags["sweep.trial_number"]): r for r in children
            if r.data.tags["mlflow.parentRunId"] == new_parent.info.run_id}
    assert sorted(runs) == [t.number for t in study.trials]
    for then, now in zip(fitting, carried, strict=True):
        run = runs[now.number]
        assert run.data.tags["sweep.from_study"] == "old" and run.data.tags["sweep.from_trial"] == str(then.number)
        assert run.data.params == {"learning_rate": str(then.params["learning_rate"]),
                                   "max_depth": str(then.params["max_depth"]), "subsample": "1.0"}
        assert run.data.metrics["roc_auc"] == pytest.approx(then.value)
        assert run.info.status == "FINISHED"

    code, out, _ = run_cli(capsys, "best", "--study-name", "new", "--storage", stores["storage"])
    assert code == 0 and json.loads(out)["value"] == pytest.approx(study.best_value)

    # the same command again: nothing carried twice, one child run per trial
    code, err = continue_from_old(tmp_path, stores, capsys, new, len(fitting) + 3)
    assert code == 0, err
    assert f"{len(fitting)} trials carried over from 'old', 1 ran now" in err
    assert sum("sweep.from_trial" in t.user_attrs for t in load_study(stores, "new").trials) == len(fitting)


def test_a_param_moved_between_fixed_and_params_carries_what_it_ran_with(tmp_path, stores, capsys, old):
    # n_estimators: fixed 8 before, searched now; max_depth: searched before, fixed at 2 now
    new = (OLD.replace("fixed: {{n_estimators: 8, random_state: 0}}", "fixed: {{max_depth: 2, random_state: 0}}")
              .replace("  max_depth: {{type: int, low: 1, high: 3}}\n",
                       "  n_estimators: {{type: int, low: 4, high: 16, step: 2}}\n"))
    depth_two = [t for t in old if t.params["max_depth"] == 2]
    code, err = continue_from_old(tmp_path, stores, capsys, new, len(depth_two) + 1)
    assert code == 0, err
    carried = [t for t in load_study(stores, "new").trials if "sweep.from_trial" in t.user_attrs]
    assert [t.user_attrs["sweep.from_trial"] for t in carried] == [t.number for t in depth_two]
    assert all(t.params["n_estimators"] == 8 for t in carried)


def test_nothing_fits_and_the_study_starts_from_scratch(tmp_path, stores, capsys, old):
    new = OLD.replace("low: 1, high: 3", "low: 4, high: 5") + "from: old\n"  # no old trial had max_depth 4 or 5
    code, _, err = run_cli(capsys, *sweep_args(space(tmp_path, "new", 2, new), stores))
    assert code == 0, err
    assert "study 'new': 2 trials ran now, 2 of 2 counted." in err
    assert not [t for t in load_study(stores, "new").trials if "sweep.from_trial" in t.user_attrs]


@pytest.mark.parametrize(("change", "line"), [
    (("cv: 2", "cv: 3"), "cv: is 3 here but was 2 in study 'old'; its trials scored something else."),
    (("seed: 7", "seed: 8"), "seed: is 8 here but was 7 in study 'old'; its trials scored something else."),
    (("metric: roc_auc", "metric: accuracy"),
     "metric: is 'accuracy' here but was 'roc_auc' in study 'old'; its trials scored something else."),
    (("GradientBoostingClassifier", "HistGradientBoostingClassifier"),
     "estimator: is 'HistGradientBoostingClassifier' here but was 'GradientBoostingClassifier' in study 'old';"
     " its trials scored something else."),
    (("holdout: 0.25", "holdout: 0.3"),
     "data: differs from the data of study 'old' (its rows or columns); its trials scored other data."),
    (("n_estimators: 8", "n_estimators: 9"),
     "fixed.n_estimators: is 9 here but was 8 in study 'old'; its trials scored something else."),
    (("random_state: 0}}", "random_state: 0, subsample: 0.5}}"),
     "fixed.subsample: is 0.5 here but was 1.0 in study 'old'; its trials scored something else."),
], ids=["cv", "seed", "metric", "estimator", "data", "fixed", "fixed-vs-default"])
def test_a_study_that_scored_something_else_is_refused_before_anything_is_created(
        tmp_path, stores, capsys, old, change, line):
    if change[0] == "GradientBoostingClassifier":  # the other estimator has no n_estimators
        text = OLD.replace("n_estimators: 8", "max_iter: 8").replace(*change)
    else:
        text = OLD.replace(*change)
    code, err = continue_from_old(tmp_path, stores, capsys, text, 4)
    assert (code, err.strip().splitlines()) == (2, [f"sweep: {line}"])
    assert "new" not in [s.study_name for s in optuna.get_all_study_summaries(load_study(stores, "old")._storage)]
    parents, _ = runs_of(stores["tracking_uri"], "carry")
    assert [p.info.run_name for p in parents] == ["old"]


def test_from_must_name_another_study_that_exists(tmp_path, stores, capsys, old):
    code, _, err = run_cli(capsys, *sweep_args(space(tmp_path, "old", 8), stores, "--from", "old"))
    assert (code, err.strip()) == (2, "sweep: from: names this sweep's own study 'old'; give the new sweep another"
                                      " study_name (or --study-name).")
    code, _, err = run_cli(capsys, *sweep_args(space(tmp_path, "new", 4), stores, "--from", "nope"))
    assert code == 2 and err.startswith("sweep: from: study 'nope' is not in storage"), err


def test_with_n_jobs_on_postgresql(tmp_path, pg_database, capsys):
    stores = {"storage": f"postgresql://postgres@127.0.0.1:5432/{pg_database}",
              "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
    code, _, err = run_cli(capsys, *sweep_args(space(tmp_path, "old", 6), stores))
    assert code == 0, err
    new = OLD.replace("low: 1, high: 3", "low: 1, high: 5")  # widened: every old trial fits
    command = sweep_args(space(tmp_path, "new", 14, new), stores, "--from", "old", "--n-jobs", "2")
    result = subprocess.run([sys.executable, str(ROOT / "sweep.py"), *command], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "6 trials carried over from 'old', 8 ran now, 14 of 14 counted." in result.stderr
    study = load_study(stores, "new")
    assert [t.user_attrs.get("sweep.from_trial") for t in study.trials[:6]] == list(range(6))
    assert len({t.user_attrs["sweep.worker"] for t in study.trials[6:]}) == 2, "both processes ran trials"
    _, children = runs_of(stores["tracking_uri"], "carry")
    numbers = [r.data.tags["sweep.trial_number"] for r in children if r.data.tags["sweep.study_name"] == "new"]
    ran = [t for t in study.trials if not t.user_attrs.get("sweep.surplus")]  # a surplus trial gets no run
    assert sorted(numbers, key=int) == [str(t.number) for t in ran]


def test_the_grid_sampler_cannot_continue_from_another_study(tmp_path, stores, capsys, old):
    new = OLD.replace("sampler: random", "sampler: grid").replace("high: 0.5, log: true", "high: 0.5, step: 0.05")
    code, err = continue_from_old(tmp_path, stores, capsys, new, 4)
    assert (code, err.strip()) == (2, "sweep: from: cannot be used with sampler grid, which would run the carried"
                                      " trials' points again; continue with another sampler, or run the grid as a"
                                      " new study.")
