"""The pure pieces, without a whole sweep: a trial's evaluation and lock-step pruning, a child-run
record written twice, slot / budget / progress counts, the study-lookup policy, URI masking."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from gbsweep import child_runs, cli, dataset, keys, runner, storages, studies, workers
from gbsweep.errors import ConfigError, mask_uri, public_url
from gbsweep.objective import (
    PREDICT_ROWS,
    PRUNING_REPORTS,
    build_estimator,
    evaluate,
    footprint,
    prepare_folds,
    scorer_for,
)
from gbsweep.params import size_param
from gbsweep.search_space import parse

SPACE = """\
study_name: units
estimator: GradientBoostingClassifier
data: {dataset: iris}
metric: accuracy
cv: 2
n_trials: 3
fixed: {n_estimators: 10, random_state: 0}
params:
  learning_rate: {type: float, low: 0.05, high: 0.5, log: true}
  max_depth: {type: int, low: 1, high: 3}
"""


@pytest.fixture(scope="module")
def config():
    return parse(SPACE)


@pytest.fixture(scope="module")
def folds(config):
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True, as_frame=True)
    return prepare_folds(config, X, y.to_numpy(), None)


# ---------------------------------------------------------------- a trial's evaluation

def test_evaluate_scores_every_fold_and_reports_nothing_without_a_pruner(config, folds) -> None:
    result = evaluate(build_estimator(config, {"learning_rate": 0.1, "max_depth": 2}), folds,
                      scorer_for(config), size=size_param(config.estimator))
    assert 0.8 < result.score <= 1.0 and result.score_std >= 0


def test_lock_step_pruning_reports_each_chunk_and_ends_where_told(config, folds) -> None:
    estimator = build_estimator(config, {"learning_rate": 0.1, "max_depth": 2})
    reported: list[tuple[int, float]] = []
    grown = evaluate(estimator, folds, scorer_for(config), lambda step, value: reported.append((step, value)))
    assert [step for step, _ in reported] == list(range(1, 11))  # 10 trees in PRUNING_REPORTS chunks
    assert len(reported) == PRUNING_REPORTS
    whole = evaluate(estimator, folds, scorer_for(config))
    assert grown.score == pytest.approx(whole.score)  # warm-started growth scores as a fit at once

    class Stop(Exception):
        pass

    seen: list[int] = []

    def stop_after_three(step: int, value: float) -> None:
        seen.append(step)
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        evaluate(estimator, folds, scorer_for(config), stop_after_three)
    assert seen == [1, 2, 3]


# ---------------------------------------------------------------- a trial's deployment numbers

def test_a_larger_ensemble_weighs_more_and_both_predict_in_positive_time(config, folds) -> None:
    fold = folds[0]
    sizes = {}
    for trees in (5, 50):
        model = build_estimator(config, {"n_estimators": trees, "max_depth": 3}).fit(fold.X_train, fold.y_train)
        measured = footprint(model, fold.X_valid)
        assert measured.predict_ms > 0 and measured.measure_s > 0
        sizes[trees] = measured.model_bytes
    assert sizes[50] > sizes[5] > 0
    assert len(fold.X_valid) < PREDICT_ROWS  # iris: the fold's rows are repeated to fill the batch


def test_evaluate_measures_once_the_first_folds_model_also_when_stopped(config, folds) -> None:
    estimator = build_estimator(config, {"learning_rate": 0.1, "max_depth": 3})
    whole: list = []
    evaluate(estimator, folds, scorer_for(config), measured=whole.append)
    assert len(whole) == 1

    def stop_after_two(step: int, value: float) -> None:
        if step == 2:
            raise optuna.TrialPruned

    stopped: list = []
    with pytest.raises(optuna.TrialPruned):
        evaluate(estimator, folds, scorer_for(config), stop_after_two, measured=stopped.append)
    assert len(stopped) == 1  # the model as it stood when stopped: 2 trees of 10
    assert 0 < stopped[0].model_bytes < whole[0].model_bytes


def test_the_trials_folds_hold_no_holdout_row() -> None:
    """Trials fit, score and measure on the folds only: every fold row is a training row."""
    space = parse(SPACE.replace("{dataset: iris}", "{dataset: breast_cancer, holdout: 0.25}"))
    data = dataset.load(space.data, space.is_classifier, space.cv, space.seed)
    folds = prepare_folds(space, data.X_train, data.y_train, data.preprocessor)
    holdout = {tuple(row) for row in data.X_test.to_numpy()}
    training = {tuple(row) for row in data.X_train.to_numpy()}
    for fold in folds:
        rows = {tuple(row) for row in fold.X_valid} | {tuple(row) for row in fold.X_train}
        assert rows <= training and not rows & holdout
    assert sum(len(fold.X_valid) for fold in folds) == len(data.X_train)


# ---------------------------------------------------------------- a trial's child-run record

def finished_trial(number: int = 0) -> optuna.trial.FrozenTrial:
    trial = create_trial(
        params={"learning_rate": 0.1}, value=0.9, state=TrialState.COMPLETE,
        distributions={"learning_rate": FloatDistribution(0.05, 0.5, log=True)},
        user_attrs={keys.SCORE_STD: 0.01, keys.FIT_TIME_S: 0.5, keys.PREDICT_MS: 0.8, keys.MODEL_BYTES: 12345},
        intermediate_values={5: 0.85, 10: 0.9},
    )
    trial.number = number
    return trial


def test_a_record_written_twice_changes_nothing(config, tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.create_experiment("units")
    record = child_runs.trial_record(finished_trial(), config, "units", "parent-id")
    run_id, wrote = child_runs.write_record(client, experiment_id, record)
    assert wrote
    again_id, wrote_again = child_runs.write_record(client, experiment_id, record,
                                                    child_runs.RunState.of(client.get_run(run_id)))
    assert (again_id, wrote_again) == (run_id, False)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "trial-0"
    assert run.data.params == {"learning_rate": "0.1", "max_depth": keys.INACTIVE}
    assert run.data.metrics == {"accuracy": 0.9, "accuracy_std": 0.01, "fit_time_s": 0.5, "predict_ms": 0.8,
                                "model_bytes": 12345}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "accuracy")] == [(5, 0.85), (10, 0.9)]
    assert run.data.tags[keys.PARENT_RUN_TAG] == "parent-id"
    assert run.data.tags[keys.TRIAL_STATE] == "COMPLETE"


# ---------------------------------------------------------------- slots, budget, progress

def study_with(states: list[TrialState]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for number, state in enumerate(states):
        value = float(number) if state == TrialState.COMPLETE else None
        study.add_trial(create_trial(state=state, value=value, params={}, distributions={}))
    return study


def test_count_is_one_pass_over_the_states() -> None:
    study = study_with([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE])
    assert runner.count(study) == runner.Count(counted=3, running=0, best=3.0, since_gain=0, pruned=1)


def test_a_slot_counts_the_running_trials_asked_before() -> None:
    study = study_with([TrialState.COMPLETE])
    counter = runner.TrialCounter()
    first, second = study.ask(), study.ask()
    assert counter.has_slot(study, 3, first) and counter.has_slot(study, 3, second)
    assert not counter.has_slot(study, 2, second)  # 1 counted + the first one running fill 2
    assert counter.has_slot(study, 2, first)
    study.tell(first, 0.5)
    assert not counter.has_slot(study, 2, second)  # the first one now counts instead


def test_the_slot_check_and_the_sampler_share_one_read_of_the_trials() -> None:
    """A storage far away pays each read of the study's trials in round trips."""
    from optuna.storages import InMemoryStorage

    class CountingStorage(InMemoryStorage):
        reads = 0

        def get_all_trials(self, *args, **kwargs):
            CountingStorage.reads += 1
            return super().get_all_trials(*args, **kwargs)

    study = optuna.create_study(storage=CountingStorage(), sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    trial = study.ask()
    before = CountingStorage.reads
    assert runner.TrialCounter().has_slot(study, 10, trial)
    trial.suggest_float("x", 0, 1)
    assert CountingStorage.reads - before == 1


def test_the_incremental_count_equals_a_fresh_one_at_every_step() -> None:
    study = optuna.create_study(direction="maximize")
    counter = runner.TrialCounter()
    running = [study.ask() for _ in range(3)]
    for step, trial in enumerate(running):
        state = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL][step]
        study.tell(trial, float(step) if state == TrialState.COMPLETE else None, state=state)
        study.ask()
        assert counter.count(study) == runner.count(study)
    assert counter.count(study) == runner.Count(counted=2, running=3, best=0.0, since_gain=1, pruned=1)


def test_the_tally_stops_at_the_total() -> None:
    study = optuna.create_study(direction="maximize")
    tally = runner.Tally(total=3, max_failures=0)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=10, callbacks=[tally.add])
    assert len(study.trials) == 3 and tally.now.counted == 3 and tally.failed == 0
    tally.check()


def test_the_tally_stops_past_the_failure_budget() -> None:
    study = optuna.create_study(direction="maximize")
    tally = runner.Tally(total=10, max_failures=1)

    def failing(trial: optuna.Trial) -> float:
        trial.set_user_attr(keys.ERROR, "ValueError: no")
        raise ValueError("no")

    study.optimize(failing, n_trials=10, catch=(ValueError,), callbacks=[tally.add])
    assert len(study.trials) == 2 and tally.failed == 2
    with pytest.raises(runner.BudgetExceeded, match="stopped after 2 failed trials"):
        tally.check()


def test_a_trial_no_worker_stamped_is_failed_once_unstamped_for_the_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its worker lost the storage between asking for it and stamping it: nothing else fails it."""
    monkeypatch.setattr(storages, "GRACE_S", 0.5)
    study = optuna.create_study(direction="maximize")
    orphan, live = study.ask(), study.ask()
    live.set_user_attr(keys.WORKER, workers.worker_id())
    unclaimed: dict[int, float] = {}
    workers.fail_stale_trials(study, unclaimed)
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.RUNNING]  # seen once: not yet
    assert list(unclaimed) == [orphan.number]
    unclaimed[orphan.number] -= 1.0  # first seen a second ago, past the grace
    workers.fail_stale_trials(study, unclaimed)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING]
    assert len(study.trials) == 2  # it drew no params: nothing to try again, its slot is simply free


def lost_connection() -> Exception:
    """What a restarting PostgreSQL gives Optuna: SQLAlchemy's OperationalError, wrapped by Optuna."""
    import sqlalchemy.exc

    try:
        try:
            driver = Exception("server closed the connection unexpectedly")
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, driver)
        except sqlalchemy.exc.OperationalError as error:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from error
    except optuna.exceptions.StorageInternalError as wrapped:
        return wrapped


def test_a_lost_database_is_waited_for_then_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storages, "OUTAGE_PAUSE_S", (0.001, 0.002))
    failures = [lost_connection(), lost_connection()]

    def call() -> str:
        if failures:
            raise failures.pop()
        return "answer"

    outage = storages.Outage("postgresql://sweeper:***@db/sweeps")
    assert outage.ride(call) == "answer" and not failures  # the restart ridden out
    outage.limit_s = 0.01
    with pytest.raises(storages.StorageLost) as lost:
        outage.ride(lambda: (_ for _ in ()).throw(lost_connection()))
    assert str(lost.value) == (
        "storage postgresql://sweeper:***@db/sweeps: its database did not answer for 0.01 s (server closed the"
        " connection unexpectedly); the finished trials are safe in it: run the same command again once it is back.")
    assert outage.given_up  # later calls try once, until one gets through
    with pytest.raises(ValueError):  # anything else is not waited for
        outage.ride(lambda: (_ for _ in ()).throw(ValueError("bad value")))
    try:  # Optuna's _run_trial raises UnboundLocalError while telling a trial the storage lost
        try:
            raise lost.value
        finally:
            raise UnboundLocalError("cannot access local variable 'updated_state'")
    except UnboundLocalError as masked:
        assert storages.storage_lost(masked) is lost.value


def run_with_progress(log_format: str) -> runner.Progress:
    study = optuna.create_study(direction="maximize")
    tally = runner.Tally(total=2, max_failures=0)
    progress = runner.Progress("units", 2, 0, quiet=False, log_format=log_format)

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        tally.add(study, trial)
        progress.show(trial, tally)

    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=5, callbacks=[callback])
    progress.close()
    return progress


def test_the_progress_bar_reads_the_tally(capsys: pytest.CaptureFixture) -> None:
    progress = run_with_progress("text")
    assert progress.bar.n == 2
    last = capsys.readouterr().err.split("\r")[-1]
    assert "2/2" in last and "pruned=0" in last and "failed=0" in last


def test_json_lines_replace_the_bar(capsys: pytest.CaptureFixture) -> None:
    run_with_progress("json")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["number"], line["state"]) for line in lines] == [(0, "COMPLETE"), (1, "COMPLETE")]


# ---------------------------------------------------------------- which study a command means

def test_the_study_lookup_policy(tmp_path: Path) -> None:
    storage = str(tmp_path / "optuna.journal")
    with pytest.raises(ConfigError, match="holds no study"):
        studies.pick_study_name(storage, None, "shipped")
    assert not Path(storage).exists()  # looking did not create the journal
    assert studies.pick_study_name(storage, "named", "shipped") == ("named", False)
    for name in ("older", "newer"):
        optuna.create_study(study_name=name, storage=storages.open_storage(storage)).optimize(
            lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    assert studies.pick_study_name(storage, None, "shipped") == ("newer", True)
    optuna.create_study(study_name="shipped", storage=storages.open_storage(storage))
    assert studies.pick_study_name(storage, None, "shipped") == ("shipped", False)


# ---------------------------------------------------------------- URIs and command-line values

def test_a_study_whose_creation_was_killed_midway_is_completed(config, tmp_path: Path) -> None:
    # A sweep killed after its first study attr and before the last (the config, which workers
    # sample from): the next `sweep run` must set the rest, or no worker could ever join.
    storage = storages.open_storage(str(tmp_path / "optuna.journal"))
    half = optuna.create_study(storage=storage, study_name="units", direction="maximize")
    half.set_user_attr(keys.SPACE_SHA256, config.space_sha256())
    study = studies.open_study(config, storage, "digest")
    assert study.user_attrs[keys.CONFIG] == config.source
    assert studies.study_config(study).space_sha256() == config.space_sha256()


def test_masked_and_public_uris_keep_an_ipv6_host_in_brackets() -> None:
    assert mask_uri("postgresql://sweeper:secret@[::1]:5432/sweeps") == "postgresql://sweeper:***@[::1]:5432/sweeps"
    assert mask_uri("postgresql://sweeper:secret@db/sweeps") == "postgresql://sweeper:***@db/sweeps"
    assert mask_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert public_url("http://user:secret@[::1]:5000/mlflow/") == "http://[::1]:5000/mlflow"
    assert public_url("https://mlflow.example") == "https://mlflow.example"


def test_the_health_probe_of_an_ipv6_server_names_the_refusal(capsys: pytest.CaptureFixture) -> None:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        port = sock.getsockname()[1]  # free once closed: nothing listens there
    code = cli.main(["run", "--tracking-uri", f"http://[::1]:{port}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"sweep: tracking URI http://[::1]:{port}: cannot be used: no answer from the server"
                   " ([Errno 111] Connection refused).\n")


def test_a_word_for_n_jobs_is_refused_in_plain_words(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--n-jobs", "two"])
    assert exit_.value.code == 2
    assert "argument --n-jobs: must be an integer >= 1. Got 'two' instead." in capsys.readouterr().err


def test_n_jobs_defaults_to_one_process_per_usable_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWEEP_N_JOBS")
    cores = len(os.sched_getaffinity(0))
    options = cli._options(cli._parser().parse_args(["run"]))
    assert (options.n_jobs, options.threads) == (cores, None if cores == 1 else 1)
    monkeypatch.setenv("SWEEP_N_JOBS", "3")
    assert cli._options(cli._parser().parse_args(["run"])).n_jobs == 3
    assert cli._options(cli._parser().parse_args(["run", "--n-jobs", "2"])).n_jobs == 2
    assert cli._options(cli._parser().parse_args(["worker"])).n_jobs == 1


def test_a_bad_sweep_n_jobs_is_refused_before_anything_is_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("SWEEP_N_JOBS", "all")
    assert cli.main(["run", "--n-trials", "1"]) == 2
    assert capsys.readouterr().err == "sweep: $SWEEP_N_JOBS must be an integer >= 1. Got 'all' instead.\n"
    assert list(tmp_path.iterdir()) == []


def test_a_typo_under_data_options_is_collected_with_the_other_problems() -> None:
    text = SPACE.replace("data: {dataset: iris}", "data: {dataset: make_classification, options: {n_rowz: 5}}")
    with pytest.raises(ConfigError) as caught:
        parse(text + "samplr: tpe\n")
    assert caught.value.problems == [
        "samplr: is not a known key. Did you mean 'sampler'?",
        "data.options.n_rowz: is not an option of make_classification; known: n_samples, n_features,"
        " n_informative, n_classes, noise.",
    ]


def test_a_tracking_store_that_cannot_be_had_is_refused_before_anything_is_created(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no" / "such" / "folder" / "mlflow.db"
    assert cli.main(["run", "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert capsys.readouterr().err == (f"sweep: tracking URI sqlite:///{missing}: cannot be used: the folder"
                                       f" '{missing.parent}' does not exist.\n")
    not_mlflow = tmp_path / "mlflow.db"
    not_mlflow.write_text("not a database")
    assert cli.main(["run", "--tracking-uri", f"sqlite:///{not_mlflow}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sweep: tracking URI sqlite:///{not_mlflow}: cannot be used: ") and "\n" == err[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]  # no study, no runs


def test_the_best_trial_so_far_is_refitted_ahead_and_handed_over(tmp_path: Path) -> None:
    from gbsweep import jobs, lifecycle

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    refit = jobs.BestRefit(lifecycle.prepare(space))

    def trial(number: int, value: float, rate: float) -> optuna.trial.FrozenTrial:
        frozen = create_trial(params={"learning_rate": rate, "max_depth": 2}, value=value,
                              distributions={"learning_rate": FloatDistribution(0.05, 0.5, log=True),
                                             "max_depth": IntDistribution(1, 3)})
        frozen.number = number
        return frozen

    for number, value in enumerate([0.5, 0.9, 0.7]):  # trial 1 is the best: the one refitted
        refit.consider(None, trial(number, value, 0.1 + number / 10))  # type: ignore[arg-type]
    model, holdout = refit.model(1, {"learning_rate": 0.2, "max_depth": 2})
    assert refit.model(1, {"learning_rate": 0.2, "max_depth": 2})[0] is model  # fitted once, ahead
    assert model.get_params()["learning_rate"] == 0.2  # iris: the bare estimator, no preprocessing
    assert 0.5 < holdout <= 1.0
    other, _ = refit.model(4, {"learning_rate": 0.3, "max_depth": 1})  # a trial another worker ran
    assert other is not model and other.get_params()["max_depth"] == 1


def test_a_new_sqlite_store_is_a_copy_of_the_cached_empty_one_and_opens_as_made_here(tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch):
    from gbsweep import tracking

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for folder in ("a", "b"):  # a: the template is migrated; b: only copied
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        uri = f"sqlite:///{tmp_path / folder}/mlflow.db"  # MLflow keeps one store per URI in a process
        tracking.create_sqlite_store_whole(uri)
        client = MlflowClient(uri)
        run = client.create_run(client.create_experiment("e"))
        client.log_param(run.info.run_id, "p", "1")
        # The Default experiment is MLflow's, made at the first open: its artifacts go where this
        # store's would, not where the template was made.
        assert client.get_experiment("0").artifact_location == str(tmp_path / folder / "mlruns" / "0")
        assert [r.data.params for r in client.search_runs(["0", run.info.experiment_id])] == [{"p": "1"}]
    assert [p.name for p in (tmp_path / "cache" / "sweep").iterdir()] == [
        f"mlflow-{__import__('mlflow').__version__}.db"]
    assert sorted(p.name for p in tmp_path.glob("*/mlflow.db*")) == ["mlflow.db", "mlflow.db"]


def test_without_a_writable_cache_folder_a_new_sqlite_store_is_migrated_in_place(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch):
    from gbsweep import tracking

    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking.create_sqlite_store_whole(uri)
    assert MlflowClient(uri).get_experiment("0").name == "Default"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "not-a-folder"]


def test_twin_child_runs_of_a_trial_are_folded_into_one(stores: dict) -> None:
    """A worker cut off from the tracking server creates its trial's run late, after the repair
    created one: whoever looks after creating keeps the smallest run id, and it says what the trial says."""
    client = MlflowClient(stores["tracking_uri"])
    experiment_id = client.create_experiment("twins")
    parent = client.create_run(experiment_id).info.run_id
    tags = child_runs.run_tags(3, "COMPLETE", "twins", parent)
    record = child_runs.TrialRecord(3, "FINISHED", {"max_depth": "3"}, [("roc_auc", 0.9, 0)], tags, 1000, 2000)
    late = client.create_run(experiment_id, start_time=1000, tags=child_runs.run_tags(3, "RUNNING", "twins", parent))
    kept, _ = child_runs.write_record(client, experiment_id, record)  # the repair's: it finds the twin
    live = client.search_runs([experiment_id], f"tags.`{keys.TRIAL_NUMBER}` = '3'")
    assert [r.info.run_id for r in live] == [kept]
    assert kept == min(kept, late.info.run_id)
    survivor = client.get_run(kept)
    assert (survivor.info.status, survivor.data.params, survivor.data.metrics) == (
        "FINISHED", {"max_depth": "3"}, {"roc_auc": 0.9})
    assert child_runs.one_run(client, experiment_id, parent, 3).run_id == kept  # looking again changes nothing


def test_against_a_server_runs_are_completed_in_threads_and_all_written_before_the_next_job(
        config, mlflow_server: str, tmp_path: Path) -> None:
    """Over HTTP each request waits a round trip, so the recorder completes runs in threads; the
    best-so-far hook still sees one trial at a time, and a job (the finalize) sees every run done."""
    import threading
    import time

    from gbsweep.recorder import COMPLETING_THREADS, TrialRecorder

    seen: list[tuple[int, str]] = []  # in the recorder's process: what the hook saw, read by a job
    inside = threading.Semaphore(1)

    def hook(agent, trial) -> None:
        assert inside.acquire(blocking=False), "two trials in the hook at once"
        time.sleep(0.1)  # a hook as slow as a request 100 ms away: a job without waiting would miss some
        seen.append((trial.number, threading.current_thread().name))
        inside.release()

    def check(agent) -> tuple[list, dict]:
        runs = child_runs.runs_by_trial(agent.client, agent.experiment_id, agent.parent_run_id)
        history = {n: (r.info.status, len(agent.client.get_metric_history(r.info.run_id, "fit_time_s")))
                   for n, r in runs.items()}
        return sorted(seen), history

    storage = str(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name=config.study_name, storage=storages.open_storage(storage),
                                direction="maximize")
    client = MlflowClient(mlflow_server)
    parent = client.create_run(client.create_experiment("completed-in-threads")).info.run_id
    recorder = TrialRecorder(mlflow_server, storage, config, jobs={"check": check}, on_trial_end=hook)
    try:
        recorder.wait_ready()
        recorder.bind(parent)
        for number in range(2 * COMPLETING_THREADS):
            trial = study.ask()
            recorder.open_trial(trial)
            trial.set_user_attr(keys.FIT_TIME_S, 0.01 * number)
            study.tell(trial, 0.5 + number / 100)
            recorder.close_trial(study.get_trials(deepcopy=False)[number])
        seen_by_job, history = recorder.call("check")
        numbers = list(range(2 * COMPLETING_THREADS))
        # what a trial that ended first waits for, in memory shared with the recorder
        assert [recorder.link_tried(n) for n in [*numbers, len(numbers)]] == [True] * len(numbers) + [False]
    finally:
        recorder.stop()
    assert [number for number, _ in seen_by_job] == numbers
    assert {thread.split("_")[0] for _, thread in seen_by_job} == {"sweep-complete"}
    assert history == {number: ("FINISHED", 1) for number in numbers}


def test_lines_said_by_two_processes_on_one_pipe_never_share_a_line() -> None:
    """`sweep run --n-jobs 2 --log-format json`: both processes write trial lines to one stderr pipe."""
    import subprocess
    import sys

    line = json.dumps({"number": 1, "params": {"p": "x" * 300}})
    said = f"from gbsweep.errors import say\nfor _ in range(3000): say({line!r})"
    read_end, write_end = os.pipe()
    writers = [subprocess.Popen([sys.executable, "-c", said], stderr=write_end) for _ in range(2)]
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        lines = pipe.read().splitlines()
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    assert len(lines) == 6000 and set(lines) == {line}
