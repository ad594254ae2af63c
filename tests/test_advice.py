"""Range advice (docs/search-space.md "Range advice"): unit tests on real in-memory Optuna studies with synthetic
objectives, and one sweep through the CLI that checks the line on stderr, `advice.txt` on the parent
run and `sweep best --advice`."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import create_trial

from conftest import small_space
from gbsweep import advice, cli, search_space, storages
from gbsweep.search_space import SweepConfig

optuna.logging.set_verbosity(optuna.logging.ERROR)

SPACE = """\
estimator: {estimator}
data: {{dataset: breast_cancer}}
metric: roc_auc
params:
{params}
"""


def config(params: str, estimator: str = "GradientBoostingClassifier") -> SweepConfig:
    return search_space.parse(SPACE.format(estimator=estimator, params=params))


def swept(cfg: SweepConfig, objective: Callable[[dict], float], n_trials: int = 30,
          direction: str = "maximize") -> list:
    """A real study on the config's space, sampled as a sweep samples it (TPE, seeded)."""
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=3))
    study.optimize(lambda trial: objective(search_space.suggest(cfg, trial)), n_trials=n_trials)
    return study.trials


LOG_LR = "  learning_rate: {type: float, low: 0.01, high: 0.5, log: true}"


def test_the_exact_line_for_a_crowded_top_on_a_log_scale() -> None:
    """Ten trials by hand: 4 of the 5 best in the top 10% of the log range (lr >= 0.34), one not."""
    cfg = config(LOG_LR)
    dist = FloatDistribution(0.01, 0.5, log=True)
    rates = [0.49, 0.45, 0.40, 0.36, 0.2, 0.05, 0.04, 0.03, 0.02, 0.01]
    scores = [0.99, 0.98, 0.97, 0.96, 0.995, 0.5, 0.4, 0.3, 0.2, 0.1]
    trials = [create_trial(params={"learning_rate": r}, distributions={"learning_rate": dist}, value=v)
              for r, v in zip(rates, scores, strict=True)]
    assert advice.advise(cfg, trials) == [
        "advice: learning_rate: 4 of the 5 best trials lie in the top 10% of [0.01, 0.5] (log scale);"
        " raise params.learning_rate.high"]
    assert advice.advise(cfg, trials[:9]) == []  # fewer than 10 completed trials: nothing said


def test_it_fires_when_the_optimum_lies_past_the_top_of_a_log_range() -> None:
    cfg = config(LOG_LR + "\n  max_depth: {type: int, low: 2, high: 40}")
    trials = swept(cfg, lambda p: math.log(p["learning_rate"]) - abs(p["max_depth"] - 20) / 100)
    (line,) = advice.advise(cfg, trials)  # max_depth's optimum, 20, is inside its range: no line
    assert line.startswith("advice: learning_rate: ")
    assert line.endswith(" best trials lie in the top 10% of [0.01, 0.5] (log scale); raise params.learning_rate.high")


def test_quiet_on_a_flat_objective() -> None:
    cfg = config(LOG_LR + "\n  max_depth: {type: int, low: 2, high: 40}")
    assert advice.advise(cfg, swept(cfg, lambda p: 0.5)) == []


def test_quiet_when_the_optimum_is_inside_the_range() -> None:
    cfg = config(LOG_LR)
    trials = swept(cfg, lambda p: -(math.log(p["learning_rate"]) - math.log(0.07)) ** 2)
    assert advice.advise(cfg, trials) == []


def test_a_linear_float_range_and_the_estimators_own_bound() -> None:
    """subsample takes at most 1.0: a crowd at 1.0 gets no advice, a crowd at 0.9 does."""
    to_one = config("  subsample: {type: float, low: 0.5, high: 1.0}")
    assert advice.advise(to_one, swept(to_one, lambda p: p["subsample"])) == []
    to_09 = config("  subsample: {type: float, low: 0.5, high: 0.9}")
    (line,) = advice.advise(to_09, swept(to_09, lambda p: p["subsample"]))
    assert line.endswith(" best trials lie in the top 10% of [0.5, 0.9]; raise params.subsample.high")


def test_an_int_range_at_the_estimators_bottom() -> None:
    """min_samples_leaf takes no int below 1: a crowd at 1 gets no advice, a crowd at 5 does."""
    from_one = config("  min_samples_leaf: {type: int, low: 1, high: 20}")
    assert advice.advise(from_one, swept(from_one, lambda p: -p["min_samples_leaf"])) == []
    from_5 = config("  min_samples_leaf: {type: int, low: 5, high: 20}")
    (line,) = advice.advise(from_5, swept(from_5, lambda p: -p["min_samples_leaf"]))
    assert line.endswith(" best trials lie in the bottom 10% of [5, 20]; lower params.min_samples_leaf.low")


def test_learning_rate_zero_is_an_end_no_estimator_passes() -> None:
    cfg = config("  learning_rate: {type: float, low: 0.0, high: 0.5}")
    trials = swept(cfg, lambda p: -p["learning_rate"])
    assert advice.advise(cfg, trials) == []


def test_a_short_int_range_counts_only_its_end_value() -> None:
    """[2, 6] holds five values: the top 10% is 6 alone (by hand: 4 of the 5 best at 6, one at 5)."""
    cfg = config("  max_depth: {type: int, low: 2, high: 6}")
    dist = IntDistribution(2, 6)
    depths = [6, 6, 6, 6, 5, 2, 2, 3, 3, 4]
    trials = [create_trial(params={"max_depth": d}, distributions={"max_depth": dist}, value=v)
              for d, v in zip(depths, [9, 8, 7, 6, 10, 1, 1, 2, 2, 3], strict=True)]
    assert advice.advise(cfg, trials) == [
        "advice: max_depth: 4 of the 5 best trials lie in the top 10% of [2, 6]; raise params.max_depth.high"]
    depths[3] = 5  # now 3 of the best 5 at the end value: no crowd
    trials = [create_trial(params={"max_depth": d}, distributions={"max_depth": dist}, value=v)
              for d, v in zip(depths, [9, 8, 7, 6, 10, 1, 1, 2, 2, 3], strict=True)]
    assert advice.advise(cfg, trials) == []


def test_a_minimized_objective_looks_at_its_lowest_values() -> None:
    """The best trials of a minimizing study are its lowest: a loss that falls with the rate."""
    cfg = config(LOG_LR)
    (line,) = advice.advise(cfg, swept(cfg, lambda p: -math.log(p["learning_rate"]), direction="minimize"),
                            maximize=False)
    assert line.endswith(" best trials lie in the top 10% of [0.01, 0.5] (log scale); raise params.learning_rate.high")


def test_a_conditional_param_counts_only_the_trials_that_sample_it() -> None:
    """The 5 best trials of all do not sample subsample (it is set only with loss exponential);
    4 of the 5 best of the 10 that do are at its top."""
    cfg = config("  loss: {type: categorical, choices: [log_loss, exponential]}\n"
                 "  subsample: {type: float, low: 0.2, high: 0.6, when: {loss: exponential}}")
    loss = optuna.distributions.CategoricalDistribution(["log_loss", "exponential"])
    sub = FloatDistribution(0.2, 0.6)
    others = [create_trial(params={"loss": "log_loss"}, distributions={"loss": loss}, value=0.9)
              for _ in range(10)]
    values = [0.6, 0.59, 0.58, 0.57, 0.3, 0.25, 0.24, 0.23, 0.22, 0.21]
    having = [create_trial(params={"loss": "exponential", "subsample": v},
                           distributions={"loss": loss, "subsample": sub}, value=v if v != 0.3 else 0.8)
              for v in values]
    assert advice.advise(cfg, others + having) == [
        "advice: subsample: 4 of the 5 best trials that sample it lie in the top 10% of [0.2, 0.6];"
        " raise params.subsample.high"]
    assert advice.advise(cfg, others + having[:9]) == []  # 9 trials sample it: too few


def test_pruned_and_failed_trials_are_not_counted() -> None:
    cfg = config(LOG_LR)
    dist = FloatDistribution(0.01, 0.5, log=True)
    trials = [create_trial(params={"learning_rate": 0.5}, distributions={"learning_rate": dist},
                           state=optuna.trial.TrialState.PRUNED) for _ in range(10)]
    assert advice.advise(cfg, trials) == []


def test_the_artifact_text() -> None:
    assert advice.as_text(["advice: a", "advice: b"]) == "advice: a\nadvice: b\n"
    assert advice.as_text([]) == advice.NONE + "\n"


# ---------------------------------------------------------------- through the CLI

ADVICE_SPACE = """\
experiment: exp
study_name: advice
estimator: GradientBoostingClassifier
data: {dataset: breast_cancer, holdout: 0.25}
metric: neg_log_loss
cv: 2
seed: 7
sampler: tpe
n_trials: 20
fixed: {n_estimators: 5, random_state: 0}
params:
  learning_rate: {type: float, low: 0.0001, high: 0.001, log: true}
  max_features: {type: categorical, choices: [sqrt, null]}
"""
LINE = (r"advice: learning_rate: [45] of the 5 best trials lie in the top 10% of \[0.0001, 0.001\] \(log scale\);"
        r" raise params.learning_rate.high")


def test_a_sweep_says_it_logs_it_and_best_repeats_it(tmp_path: Path, stores: dict,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A learning rate far too low for 5 trees: the best trials crowd the top of its range."""
    import re

    from mlflow import MlflowClient

    path = small_space(tmp_path, text=ADVICE_SPACE)
    store_args = ["--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"]]
    assert cli.main(["run", "--config", str(path), "-q", *store_args]) == 0
    err = capsys.readouterr().err.splitlines()
    assert re.fullmatch(LINE, err[-1]), err  # the last line, after the summary
    assert err[-2].startswith("best trial ")

    study = optuna.load_study(study_name="advice", storage=storages.open_storage(stores["storage"]))
    client = MlflowClient(stores["tracking_uri"])
    logged = client.download_artifacts(study.user_attrs["sweep.parent_run_id"], advice.ARTIFACT, str(tmp_path))
    assert Path(logged).read_text() == err[-1] + "\n"
    capsys.readouterr()  # MLflow's download progress bar

    assert cli.main(["best", "--storage", stores["storage"], "--study-name", "advice", "--advice"]) == 0
    out, said = capsys.readouterr()
    assert json.loads(out)["study"] == "advice"
    assert said.splitlines() == [err[-1]]
    assert cli.main(["best", "--storage", stores["storage"], "--study-name", "advice"]) == 0
    assert capsys.readouterr().err == ""  # only on request
