"""Deployable winners: constraints on what a trial's model costs (`constraints:`) and a metric traded
against one of those costs (`metric: [roc_auc, model_bytes]`), through the CLI, against real stores:
the runs, the export, `sweep best --pareto` and the Model Registry, as a user would check them."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient
from test_sweep import load_study, run_cli, runs_of, sweep_args

from conftest import small_space
from gbsweep import lifecycle
from gbsweep.objective import footprint, prepare_folds
from gbsweep.params import estimator_class

# model_bytes grows with max_depth: a limit between the depths splits the trials
SPACE = """\
experiment: goals
study_name: {study}
model_name: goals
estimator: GradientBoostingClassifier
data: {{dataset: breast_cancer, holdout: 0.25}}
metric: {metric}
cv: 2
seed: {seed}
sampler: random
n_trials: {n_trials}
fixed: {{n_estimators: 8, random_state: 0}}
params:
  learning_rate: {{type: float, low: 0.05, high: 0.5, log: true}}
  max_depth: {{type: int, low: 1, high: 5}}
{extra}"""


def space(tmp_path, study: str, n_trials: int = 8, metric: str = "roc_auc", extra: str = "", seed: int = 7) -> str:
    text = SPACE.format(study=study, n_trials=n_trials, metric=metric, extra=extra, seed=seed)
    return str(small_space(tmp_path, study=study, text=text))


def sweep(capsys, tmp_path, stores, study: str, *extra_args: str, **space_args) -> tuple[int, str, str]:
    return run_cli(capsys, *sweep_args(space(tmp_path, study, **space_args), stores, *extra_args))


def child_runs(stores: dict, study: str) -> dict[int, object]:
    _, children = runs_of(stores["tracking_uri"], "goals")
    return {int(r.data.tags["sweep.trial_number"]): r for r in children
            if r.data.tags["sweep.study_name"] == study}


def dominated(trial, others) -> bool:
    """Beaten on one objective without losing on the other (roc_auc up, model_bytes down)."""
    (score, size) = trial.values
    return any(s >= score and b <= size and (s, b) != (score, size) for s, b in (o.values for o in others))


@pytest.fixture
def free(tmp_path, stores, capsys) -> dict[int, tuple[float, int]]:
    """An unconstrained study 'free' (its champion is the registered model 'goals' @champion);
    each trial's (roc_auc, model_bytes)."""
    code, _, err = sweep(capsys, tmp_path, stores, "free")
    assert code == 0, err
    return {t.number: (t.value, t.user_attrs["sweep.model_bytes"]) for t in load_study(stores, "free").trials}


def test_a_constrained_sweep_exports_and_promotes_the_best_trial_within_its_limits(tmp_path, stores, capsys, free):
    best = max(free, key=lambda n: free[n][0])
    limit = free[best][1] - 1  # the unconstrained best is over the limit
    within = {n for n, (_, size) in free.items() if size <= limit}
    assert within and within != set(free), "the limit must split the trials"
    expected = max(within, key=lambda n: free[n][0])

    # the same seed and sampler draw the same trials; each model's pickle is the same size again
    limited = f"constraints: {{model_bytes: {{max: {limit}}}}}\n"
    code, out, err = sweep(capsys, tmp_path, stores, "limited", extra=limited)
    assert code == 0, err
    assert f"{len(within)} of 8 completed trials kept within the constraints (model_bytes <= {limit})." in err
    assert f"best trial {expected}: roc_auc {free[expected][0]:.4f}" in err
    exported = json.loads(out)
    assert (exported["trial"], exported["model_bytes"]) == (expected, free[expected][1])

    study = load_study(stores, "limited")
    assert {t.number for t in study.trials if all(v <= 0 for v in t.constraints.values())} == within
    runs = child_runs(stores, "limited")
    assert {n: r.data.metrics["feasible"] for n, r in runs.items()} == {n: float(n in within) for n in free}
    assert all(r.data.metrics["model_bytes"] == free[n][1] for n, r in runs.items())

    # the free study's champion is over the limit: the constrained sweep's best takes its place
    version = MlflowClient(stores["tracking_uri"]).get_model_version_by_alias("goals", "champion")
    assert (version.tags["sweep.study_name"], version.tags["sweep.trial_number"]) == ("limited", str(expected))
    assert float(version.tags["sweep.model_bytes"]) <= limit
    assert json.loads(version.tags["sweep.constraints"]) == {"model_bytes": limit}

    code, out, _ = run_cli(capsys, "best", "--study-name", "limited", "--storage", stores["storage"])
    assert (code, json.loads(out)) == (0, exported)
    code, out, err = run_cli(capsys, "best", "--pareto", "--study-name", "limited", "--storage", stores["storage"])
    assert (code, err.strip()) == (2, "sweep: --pareto: study 'limited' has one objective; a front needs two"
                                      " (metric: [<scorer>, predict_ms or model_bytes]).")

    # a new study with the limit, started from the free one: its trials are judged by their numbers
    code, out, err = sweep(capsys, tmp_path, stores, "carried", "--from", "free", extra=limited)
    assert code == 0, err
    assert "8 trials carried over from 'free', 0 ran now, 8 of 8 counted." in err
    assert json.loads(out)["trial"] == expected
    assert {n: r.data.metrics["feasible"] for n, r in child_runs(stores, "carried").items()} \
        == {n: float(n in within) for n in free}

    # the exported params rebuild an estimator that meets the limit when measured again
    prepared = lifecycle.prepare(space(tmp_path, "limited", extra=limited))
    data = prepared.dataset
    fold = prepare_folds(prepared.config, data.X_train, data.y_train, data.preprocessor)[0]
    model = estimator_class("GradientBoostingClassifier")(**exported["params"]).fit(fold.X_train, fold.y_train)
    assert footprint(model, fold.X_valid).model_bytes <= limit


def test_when_no_trial_keeps_within_the_limits_nothing_is_promoted(tmp_path, stores, capsys):
    code, out, err = sweep(capsys, tmp_path, stores, "tiny", n_trials=3,
                           extra="constraints: {model_bytes: {max: 100}, predict_ms: {max: 1e3}}\n")
    message = ("sweep: study 'tiny': none of its 3 completed trials meets the constraints (predict_ms <= 1000,"
               " model_bytes <= 100); nothing is exported or promoted.")
    assert (code, out, err.strip().splitlines()[-1]) == (1, "", message)
    assert "Traceback" not in err
    assert MlflowClient(stores["tracking_uri"]).search_model_versions("name='goals'") == []
    assert [r.data.metrics["feasible"] for r in child_runs(stores, "tiny").values()] == [0.0] * 3
    code, out, err = run_cli(capsys, "best", "--study-name", "tiny", "--storage", stores["storage"])
    assert (code, out, err.strip()) == (1, "", message)


def test_two_objectives_tag_the_front_and_promote_its_best_metric(tmp_path, stores, capsys):
    code, out, err = sweep(capsys, tmp_path, stores, "mo", n_trials=10, metric="[roc_auc, model_bytes]", seed=5)
    assert code == 0, err
    study = load_study(stores, "mo")
    trials = study.trials
    front = sorted((t for t in trials if not dominated(t, trials)), key=lambda t: (-t.values[0], t.number))
    assert len(front) >= 2, "a front of one would show no trade-off"
    assert f"the Pareto front of roc_auc and model_bytes: {len(front)} trials" in err

    code, listed, _ = run_cli(capsys, "best", "--pareto", "--study-name", "mo", "--storage", stores["storage"])
    assert code == 0
    listed = json.loads(listed)
    assert [(e["trial"], e["value"], e["model_bytes"]) for e in listed] == \
           [(t.number, t.values[0], t.values[1]) for t in front]
    assert json.loads(out) == listed[0], "the champion is the front's member with the best roc_auc"
    assert {n for n, r in child_runs(stores, "mo").items() if r.data.tags.get("sweep.pareto") == "true"} \
        == {t.number for t in front}

    # `select: within` trades a little roc_auc for a smaller model; --from carries every trial
    within = front[0].values[0] - front[-1].values[0]
    code, out, err = sweep(capsys, tmp_path, stores, "picked", "--from", "mo", n_trials=10,
                           metric="[roc_auc, model_bytes]", extra=f"select: {{within: {within}}}\n", seed=5)
    assert code == 0, err
    assert "10 trials carried over from 'mo', 0 ran now, 10 of 10 counted." in err
    assert json.loads(out)["trial"] == front[-1].number  # the smallest model on the front


def test_two_objectives_with_forked_workers_and_sync(tmp_path, stores, capsys):
    code, _, err = sweep(capsys, tmp_path, stores, "mo2", "--n-jobs", "2", n_trials=8,
                         metric="[roc_auc, predict_ms]", extra="constraints: {model_bytes: {max: 1e9}}\n")
    assert code == 0, err
    study = load_study(stores, "mo2")
    ran = [t for t in study.trials if not t.user_attrs.get("sweep.surplus")]
    assert len({t.user_attrs["sweep.worker"] for t in ran}) == 2, "both processes ran trials"
    assert all(len(t.values) == 2 and t.values[1] == t.user_attrs["sweep.predict_ms"] for t in ran)
    client = MlflowClient(stores["tracking_uri"])
    runs = child_runs(stores, "mo2")
    assert sorted(runs) == [t.number for t in ran]
    lost = runs[ran[0].number]
    client.delete_run(lost.info.run_id)
    code, _, err = run_cli(capsys, "sync", "--study-name", "mo2", "--storage", stores["storage"],
                           "--tracking-uri", stores["tracking_uri"])
    assert code == 0, err
    again = child_runs(stores, "mo2")[ran[0].number]
    assert again.data.metrics["feasible"] == 1.0
    front = {t.number for t in ran if not dominated(t, ran)}
    assert (again.data.tags.get("sweep.pareto") == "true") == (ran[0].number in front)


@pytest.mark.parametrize(("extra", "metric", "problem"), [
    ("constraints: {predict_ms: {max: 0}}\n", "roc_auc",
     "constraints.predict_ms: must be {max: <a number > 0>}. Got {'max': 0} instead."),
    ("constraints: {fit_time: {max: 1}}\n", "roc_auc",
     "constraints.fit_time: is not a known key. Known keys: predict_ms, model_bytes."),
    ("constraints: {model_bytes: {min: 1}}\n", "roc_auc",
     "constraints.model_bytes: must be {max: <a number > 0>}. Got {'min': 1} instead."),
    ("", "[roc_auc, fit_time_s]",
     "metric[1]: the second objective must be one of predict_ms, model_bytes (minimized). Got 'fit_time_s' instead."),
    ("select: {within: 0.01}\n", "roc_auc",
     "select: applies only with two objectives (metric: [<scorer>, predict_ms or model_bytes])."),
    ("select: {within: -1}\n", "[roc_auc, predict_ms]",
     "select: must be {within: <a number >= 0>}. Got {'within': -1} instead."),
    ("pruner: median\n", "[roc_auc, predict_ms]",
     "pruner: must be none with two objectives (metric: [roc_auc, predict_ms]). Got 'median' instead."),
])
def test_goals_are_validated_before_anything_is_created(tmp_path, stores, capsys, extra, metric, problem):
    code, out, err = sweep(capsys, tmp_path, stores, "bad", metric=metric, extra=extra)
    assert (code, err.strip()) == (2, f"sweep: {problem}")
    assert not (tmp_path / "optuna.journal").exists()
