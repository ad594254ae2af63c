"""The search's own rules, on tiny data and timing nothing: the estimator's early stop (on by fold
size; a fold that stopped itself grows no further), a pruner's rung decision and the trees it
saved, the cheap start (TPE's first trial is the estimator's defaults), and the plateau stop."""

from __future__ import annotations

import mlflow
import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState, create_trial

from conftest import SMALL_SPACE, small_space
from gbsweep import cli, keys, runner, storages, studies
from gbsweep.errors import ConfigError
from gbsweep.objective import PRUNING_REPORTS, build_estimator, evaluate, prepare_folds, scorer_for
from gbsweep.search_space import parse, with_early_stop

EARLY_STOP = {"n_iter_no_change": 10, "validation_fraction": 0.1}


def space_text(n_trials: int = 3, extra: str = "", study: str = "pays") -> str:
    return SMALL_SPACE.format(study=study, experiment="exp", n_trials=n_trials) + extra


def run(capsys: pytest.CaptureFixture, config, stores: dict, *extra: str) -> tuple[int, str, str]:
    code = cli.main(["run", "-q", "--config", str(config), "--storage", stores["storage"],
                       "--tracking-uri", stores["tracking_uri"], *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def study_of(stores: dict, name: str = "pays") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storages.open_storage(stores["storage"]))


# ---------------------------------------------------------------- the estimator's early stop

def test_auto_early_stop_is_on_from_2000_training_rows_a_fold() -> None:
    assert with_early_stop(parse(space_text()), 10**6).early_stop_params == {}  # off by default
    config = parse(space_text(extra="early_stop: auto\n"))  # cv 2: a fold trains on half the rows
    assert with_early_stop(config, 3999).fixed == config.fixed
    on = with_early_stop(config, 4000)
    assert on.fixed == {**EARLY_STOP, **config.fixed} and on.early_stop_params == EARLY_STOP
    assert on.space_sha256() != config.space_sha256()  # a study remembers which it ran
    assert with_early_stop(parse(space_text(extra="early_stop: true\n")), 10).early_stop_params == EARLY_STOP
    assert with_early_stop(parse(space_text(extra="early_stop: false\n")), 10**6).fixed == config.fixed
    own = parse(space_text(extra="early_stop: true\n").replace("fixed: {", "fixed: {n_iter_no_change: 3, "))
    assert with_early_stop(own, 10**6).fixed["n_iter_no_change"] == 3  # the user's own value wins
    hist = parse(space_text(extra="early_stop: true\n").replace("GradientBoostingClassifier",
                                                                "HistGradientBoostingClassifier")
                 .replace("n_estimators: 8", "max_iter: 8").replace("max_features: {type: categorical,"
                                                                    " choices: [sqrt, null]}", ""))
    assert with_early_stop(hist, 10).early_stop_params == {"early_stopping": True, **EARLY_STOP}


@pytest.mark.parametrize(("extra", "problem"), [
    ("early_stop: yes please\n", "early_stop: must be auto, true or false. Got 'yes please' instead."),
    ("plateau: {patience: 0}\n", "plateau.patience: must be an integer >= 1. Got 0 instead."),
    ("plateau: {min_delta: -1}\n", "plateau.min_delta: must be a number >= 0. Got -1 instead."),
    ("plateau: {patients: 5}\n", "plateau.patients: is not a known key"),
    ("plateau: 5\n", "plateau: must be {patience: <an integer >= 1>, min_delta: <a number >= 0>} or null."),
])
def test_bad_search_settings_are_refused_in_one_line(extra: str, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse(space_text(extra=extra))
    assert any(line.startswith(problem) for line in refused.value.problems)


@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris

    config = parse(space_text().replace("breast_cancer", "iris").replace("roc_auc", "accuracy"))
    X, y = load_iris(return_X_y=True, as_frame=True)
    return config, prepare_folds(config, X, y.to_numpy(), None)


def test_a_fold_that_stopped_itself_grows_no_further_in_chunks(iris) -> None:
    config, folds = iris
    estimator = build_estimator(config, {"learning_rate": 1.0, "max_depth": 3, "n_estimators": 200,
                                         "n_iter_no_change": 3, "validation_fraction": 0.2})
    reported: list[int] = []
    chunked = evaluate(estimator, folds, scorer_for(config), lambda step, value: reported.append(step))
    whole = evaluate(estimator, folds, scorer_for(config))
    assert whole.trees < 20  # it stops itself within the first chunk of 20 trees
    assert chunked.trees == whole.trees and chunked.score == pytest.approx(whole.score)
    assert reported == [20] and len(reported) < PRUNING_REPORTS  # no chunk after every fold stopped


def test_without_an_early_stop_every_tree_grows(iris) -> None:
    config, folds = iris
    estimator = build_estimator(config, {"learning_rate": 1.0, "max_depth": 3, "n_estimators": 30})
    assert evaluate(estimator, folds, scorer_for(config)).trees == 30


def test_a_sweep_with_the_early_stop_grows_fewer_trees_and_exports_the_stop(tmp_path, stores, capsys) -> None:
    text = space_text(extra="early_stop: true\n").replace("n_estimators: 8", "n_estimators: 60") \
        .replace("low: 0.05, high: 0.5", "low: 0.6, high: 1.0")
    code, out, err = run(capsys, small_space(tmp_path, text=text), stores)
    assert code == 0, err
    assert "of the trees not grown" in err
    study = study_of(stores)
    grown = [t.user_attrs[keys.TREES] for t in study.trials]
    assert all(0 < trees <= 60 for trees in grown) and min(grown) < 60
    assert all(t.user_attrs[keys.TREES_ASKED] == 60 for t in study.trials)
    client = MlflowClient(stores["tracking_uri"])
    runs = {int(r.data.tags[keys.TRIAL_NUMBER]): r for r in
            client.search_runs([client.get_experiment_by_name("exp").experiment_id], "tags.`sweep.trial_number` != ''")}
    assert {n: r.data.metrics["trees"] for n, r in runs.items()} == dict(enumerate(grown))
    assert '"n_iter_no_change": 10' in out  # the export refits with the same stop
    mlflow.set_tracking_uri(stores["tracking_uri"])  # another test may have left the global one elsewhere
    model = mlflow.sklearn.load_model("models:/exp@champion")
    assert model.get_params()["n_iter_no_change"] == 10 and model.n_estimators_ <= 60
    code = cli.main(["trials", "--format", "csv", "--study-name", "pays", "--storage", stores["storage"]])
    header = capsys.readouterr().out.splitlines()[0].split(",")
    assert code == 0 and "trees" in header


# ---------------------------------------------------------------- a rung decision and its savings

def test_a_rung_decision_prunes_the_weak_trial_where_it_stands() -> None:
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    strong = study.ask()
    runner.ChunkReporter(strong)(1, 0.9)  # alone at the rung: promoted
    study.tell(strong, 0.95)
    weak = study.ask()
    reporter = runner.ChunkReporter(weak)
    with pytest.raises(optuna.TrialPruned, match="pruned after 1 trees"):
        reporter(1, 0.1)
    assert reporter.step == 1  # what the runner records as the trees it grew


def test_the_trees_saved_are_counted_at_each_trials_own_pace() -> None:
    attrs = {keys.TREES: 25.0, keys.TREES_ASKED: 100, keys.FIT_TIME_S: 0.5}
    pruned = create_trial(state=TrialState.PRUNED, params={}, distributions={}, user_attrs=attrs,
                          intermediate_values={25: 0.5})
    assert studies.trees_saved(pruned) == (25.0, 100.0, pytest.approx(1.5))
    assert studies.trees_saved(create_trial(state=TrialState.COMPLETE, value=1.0)) == (0.0, 0.0, 0.0)
    study = optuna.create_study(direction="maximize")
    study.add_trial(pruned)
    now = runner.count(study)
    assert now.pruned == 1 and now.saved_text() == "75% of the trees not grown (75 of 100 per fold), about 2 s" \
        " of fitting saved"


# ---------------------------------------------------------------- the cheap start

def test_tpe_starts_from_the_estimators_defaults(tmp_path, stores, capsys) -> None:
    code, _, err = run(capsys, small_space(tmp_path, n_trials=3, study="pays"), stores)
    assert code == 0, err
    assert "3 trials ran now, 3 of 3 counted" in err
    first = study_of(stores).trials[0]
    assert first.params == {"learning_rate": 0.1, "max_depth": 3, "max_features": None}
    assert first.user_attrs[keys.CHEAP_START] is True and first.state == TrialState.COMPLETE


def test_other_samplers_draw_their_first_trial(tmp_path, stores, capsys) -> None:
    text = space_text().replace("sampler: tpe", "sampler: random")
    code, _, err = run(capsys, small_space(tmp_path, text=text), stores)
    assert code == 0, err
    assert keys.CHEAP_START not in study_of(stores).trials[0].user_attrs


# ---------------------------------------------------------------- the plateau stop

def test_the_plateau_counts_trials_since_the_last_gain_beyond_min_delta() -> None:
    study = optuna.create_study(direction="maximize")
    counter = runner.TrialCounter(min_delta=0.01)
    lengths = []
    for value in (0.5, 0.505, 0.509, 0.52, 0.4):  # 0.505 and 0.509 rise by less than 0.01 over 0.5
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=value))
        lengths.append(counter.count(study).since_gain)
    assert lengths == [0, 1, 2, 0, 1]
    assert counter.count(study).best == 0.52 and counter.count(study).plateaued(1)
    assert not counter.count(study).plateaued(None)


def test_a_study_stops_itself_at_a_plateau_and_stays_stopped(tmp_path, stores, capsys) -> None:
    config = small_space(tmp_path, text=space_text(n_trials=10, extra="plateau: {patience: 2, min_delta: 1.0}\n"))
    code, out, err = run(capsys, config, stores)
    assert code == 0, err
    assert "3 trials ran now, 3 of 10 counted" in err  # the first sets the best; no score rises by 1.0
    assert "stopped at a plateau: the best has not risen by more than 1 in the last 2 trials" in err
    assert '"trial"' in out  # the best is exported and promoted all the same
    code, _, err = run(capsys, config, stores)
    assert code == 0 and "0 trials ran now, 3 of 10 counted" in err
    config.write_text(config.read_text().replace("patience: 2", "patience: 4"))  # not part of the study's space
    code, _, err = run(capsys, config, stores)
    assert code == 0 and "2 trials ran now, 5 of 10 counted" in err


def test_a_study_run_without_the_early_stop_is_resumed_only_as_it_ran(tmp_path, stores, capsys) -> None:
    """A study run with `early_stop: false` (the default) is refused with the early stop on."""
    large = space_text(n_trials=1).replace("{dataset: breast_cancer, holdout: 0.25}",
                                           "{dataset: make_classification, holdout: 0.2, options: {n_samples: 5000}}")
    config = small_space(tmp_path, text=large + "early_stop: false\n")
    assert run(capsys, config, stores)[0] == 0
    config.write_text(large.replace("n_trials: 1", "n_trials: 2") + "early_stop: auto\n")  # on: 2,000 rows a fold
    code, _, err = run(capsys, config, stores)
    assert code == 2
    assert err.strip() == ("sweep: study 'pays': ran without the estimator's early stop; resume it with"
                           " `early_stop: false` (the default), or pick a new --study-name.")
    assert len(study_of(stores).trials) == 1  # nothing ran
