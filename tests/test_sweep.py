"""End to end through the CLI, in-process, against real sqlite MLflow stores and journal Optuna storages."""

from __future__ import annotations

import json
import math
import os

import mlflow
import optuna
import pytest
import yaml
from mlflow import MlflowClient

from conftest import cli_in, small_space
from gbsweep import cli, storages


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def sweep_args(config, stores: dict, *extra: str) -> list[str]:
    return ["run", "-q", "--config", str(config), "--storage", stores["storage"],
            "--tracking-uri", stores["tracking_uri"], *extra]


def runs_of(tracking_uri: str, experiment: str) -> tuple:
    """(parent runs, child runs) of an experiment, as the MLflow UI would list them."""
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def load_study(stores: dict, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storages.open_storage(stores["storage"]))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One small sweep of 4 trials, run through the CLI once, for the tests that only read it."""
    root = tmp_path_factory.mktemp("shared-sweep")
    stores = {"tracking_uri": f"sqlite:///{root}/mlflow.db", "storage": str(root / "optuna.journal")}
    config = small_space(root, study="small", n_trials=4)
    code, out, err = cli_in(root, *sweep_args(config, stores))
    assert code == 0, err
    return {"config": config, "out": out, "err": err, "stores": stores, "study": load_study(stores, "small")}


@pytest.fixture
def finished(tmp_path, stores, capsys):
    """One small sweep of 4 trials, run through the CLI, for a test that changes it."""
    config = small_space(tmp_path, study="small", n_trials=4)
    code, out, err = run_cli(capsys, *sweep_args(config, stores))
    assert code == 0, err
    return {"config": config, "out": out, "err": err, "study": load_study(stores, "small")}


def test_one_parent_one_child_per_trial_with_exactly_the_sampled_params(shared):
    stores = shared["stores"]
    parents, children = runs_of(stores["tracking_uri"], "exp")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == "small"
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweep.study_name"] == "small"
    assert parent.data.params["estimator"] == "GradientBoostingClassifier"
    assert parent.data.params["fixed.n_estimators"] == "8"

    study = shared["study"]
    assert len(children) == len(study.trials) == 4
    by_number = {int(r.data.tags["sweep.trial_number"]): r for r in children}
    for trial in study.trials:
        run = by_number[trial.number]
        assert run.info.run_name == f"trial-{trial.number}"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.run_id == trial.user_attrs["mlflow_run_id"]
        assert run.data.params == {k: str(v) for k, v in trial.params.items()}
        assert run.info.status == "FINISHED"
        assert run.data.metrics["roc_auc"] == pytest.approx(trial.value)
        assert set(run.data.metrics) == {"roc_auc", "roc_auc_std", "fit_time_s", "trees", "predict_ms", "model_bytes"}
        assert run.data.metrics["trees"] == 8  # breast_cancer's folds are too small for the early stop
        assert run.data.metrics["predict_ms"] > 0 and run.data.metrics["model_bytes"] > 0
        assert run.data.metrics["predict_ms"] == pytest.approx(trial.user_attrs["sweep.predict_ms"])
        assert run.data.metrics["model_bytes"] == trial.user_attrs["sweep.model_bytes"]
    assert study.user_attrs["sweep.parent_run_id"] == parent.info.run_id


def test_sync_rebuilds_a_lost_child_run_with_its_deployment_numbers(finished, stores, capsys):
    client = MlflowClient(stores["tracking_uri"])
    lost = runs_of(stores["tracking_uri"], "exp")[1][0]
    number = int(lost.data.tags["sweep.trial_number"])
    client.delete_run(lost.info.run_id)
    code, _, err = run_cli(capsys, "sync", "--study-name", "small", "--storage", stores["storage"],
                           "--tracking-uri", stores["tracking_uri"])
    assert code == 0, err
    children = runs_of(stores["tracking_uri"], "exp")[1]
    rebuilt, = [r for r in children if r.data.tags["sweep.trial_number"] == str(number)]
    assert rebuilt.info.run_id != lost.info.run_id
    for name in ("fit_time_s", "predict_ms", "model_bytes"):
        assert rebuilt.data.metrics[name] == pytest.approx(lost.data.metrics[name]) and rebuilt.data.metrics[name] > 0


def test_parent_run_holds_the_best_params_and_the_sweep_artifacts(shared, tmp_path):
    stores = shared["stores"]
    study = shared["study"]
    parent, = runs_of(stores["tracking_uri"], "exp")[0]
    client = MlflowClient(stores["tracking_uri"])
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"search_space.yaml", "best_params.json", "best_params.yaml", "trials.csv"} <= names
    path = client.download_artifacts(parent.info.run_id, "best_params.json", str(tmp_path))
    best = json.loads(open(path).read())
    measured = study.best_trial.user_attrs
    assert best == {"study": "small", "trial": study.best_trial.number, "value": study.best_value,
                    "predict_ms": measured["sweep.predict_ms"], "model_bytes": measured["sweep.model_bytes"],
                    "params": {"n_estimators": 8, "random_state": 0, **study.best_params}}
    assert json.loads(shared["out"]) == best
    # 4 trials are too few for range advice: none said, and the artifact says there is none
    assert "advice:" not in shared["err"]
    path = client.download_artifacts(parent.info.run_id, "advice.txt", str(tmp_path))
    assert open(path).read().startswith("no advice: ")
    assert parent.data.metrics["best_roc_auc"] == pytest.approx(study.best_value)
    assert "holdout_roc_auc" in parent.data.metrics


def test_champion_alias_loads_and_predicts(shared):
    stores = shared["stores"]
    from sklearn.datasets import load_breast_cancer

    client = MlflowClient(stores["tracking_uri"])
    version = client.get_model_version_by_alias("exp", "champion")
    assert version.tags["sweep.study_name"] == "small"
    assert version.tags["sweep.trial_number"] == str(shared["study"].best_trial.number)
    mlflow.set_tracking_uri(stores["tracking_uri"])
    model = mlflow.pyfunc.load_model("models:/exp@champion")
    X = load_breast_cancer(as_frame=True).data.head(10)
    predictions = model.predict(X)
    assert len(predictions) == 10 and set(predictions) <= {0, 1}


def test_best_exports_the_study_best_params_plus_fixed(shared, capsys, tmp_path):
    stores = shared["stores"]
    study = shared["study"]
    expected = {"n_estimators": 8, "random_state": 0, **study.best_params}
    code, out, _ = run_cli(capsys, "best", "--study-name", "small", "--storage", stores["storage"])
    assert code == 0
    assert json.loads(out)["params"] == expected
    target = tmp_path / "best.yaml"
    code, out, _ = run_cli(capsys, "best", "--study-name", "small", "--storage", stores["storage"],
                           "--format", "yaml", "--output", str(target))
    assert code == 0 and out == ""
    exported = yaml.safe_load(target.read_text())
    measured = study.best_trial.user_attrs
    assert exported == {"study": "small", "trial": study.best_trial.number, "value": study.best_value,
                        "predict_ms": measured["sweep.predict_ms"], "model_bytes": measured["sweep.model_bytes"],
                        "params": expected}
    from sklearn.ensemble import GradientBoostingClassifier

    GradientBoostingClassifier(**exported["params"])  # ready for Estimator(**params)


def test_resume_runs_only_the_missing_trials_under_the_same_parent(finished, stores, capsys):
    config = finished["config"]
    parent_id = finished["study"].user_attrs["sweep.parent_run_id"]
    code, _, err = run_cli(capsys, *sweep_args(config, stores, "--n-trials", "6"))
    assert code == 0, err
    study = load_study(stores, "small")
    assert len(study.trials) == 6
    parents, children = runs_of(stores["tracking_uri"], "exp")
    assert [p.info.run_id for p in parents] == [parent_id]
    assert sorted(int(r.data.tags["sweep.trial_number"]) for r in children) == list(range(6))


def test_a_finished_study_runs_and_promotes_nothing_new(finished, stores, capsys):
    code, _, err = run_cli(capsys, *sweep_args(finished["config"], stores))
    assert code == 0, err
    assert "0 trials ran now" in err
    assert len(load_study(stores, "small").trials) == 4
    versions = MlflowClient(stores["tracking_uri"]).search_model_versions("name='exp'")
    assert len(versions) == 1


def test_a_sweep_killed_between_registering_and_recording_it_registers_no_second_version(finished, stores, capsys):
    # make chaos found it: a kill after the version was registered, before the study recorded the
    # promotion; the same command run again promoted the same trial as a second version.
    client = MlflowClient(stores["tracking_uri"])
    (registered,) = client.search_model_versions("name='exp'")
    load_study(stores, "small").set_user_attr("sweep.promoted_trial", None)  # what the kill left
    code, _, err = run_cli(capsys, *sweep_args(finished["config"], stores))
    assert code == 0, err
    assert f"registered 'exp' version {registered.version} as @champion" in err
    assert [v.version for v in client.search_model_versions("name='exp'")] == [registered.version]
    assert client.get_model_version_by_alias("exp", "champion").version == registered.version


def test_a_parent_run_its_study_never_linked_is_resumed_not_made_again(finished, stores, capsys):
    # A recorder killed after creating the parent run and before linking it to the study: the run
    # carries the study's key, and the next `sweep run` resumes it instead of making a second one.
    study = load_study(stores, "small")
    parent_id = study.user_attrs["sweep.parent_run_id"]
    study.set_user_attr("sweep.parent_run_id", None)  # what the kill left
    code, _, err = run_cli(capsys, *sweep_args(finished["config"], stores, "--n-trials", "5"))
    assert code == 0, err
    parents, children = runs_of(stores["tracking_uri"], "exp")
    assert [p.info.run_id for p in parents] == [parent_id]
    assert parents[0].info.status == "FINISHED" and len(children) == 5
    assert load_study(stores, "small").user_attrs["sweep.parent_run_id"] == parent_id


def test_resume_with_a_changed_space_is_refused(finished, stores, capsys):
    config = finished["config"]
    config.write_text(config.read_text().replace("high: 3", "high: 4"))
    code, _, err = run_cli(capsys, *sweep_args(config, stores, "--n-trials", "6"))
    assert code == 2
    assert err == ("sweep: study 'small': was started with another search space, data or metric;"
                   " resume it with the same file or pick a new --study-name.\n")
    assert len(load_study(stores, "small").trials) == 4


def test_a_worse_sweep_gets_challenger_and_leaves_champion(finished, stores, capsys, tmp_path):
    client = MlflowClient(stores["tracking_uri"])
    champion = client.get_model_version_by_alias("exp", "champion")
    worse = small_space(tmp_path, study="worse", text="""\
experiment: exp
model_name: exp
study_name: worse
estimator: GradientBoostingClassifier
data: {dataset: breast_cancer, holdout: 0.25}
metric: roc_auc
cv: 2
seed: 7
n_trials: 2
fixed: {n_estimators: 1, max_depth: 1, random_state: 0}
params:
  learning_rate: {type: float, low: 0.001, high: 0.002}
""")
    code, _, err = run_cli(capsys, *sweep_args(worse, stores))
    assert code == 0, err
    assert "@challenger" in err
    assert client.get_model_version_by_alias("exp", "champion").version == champion.version
    challenger = client.get_model_version_by_alias("exp", "challenger")
    assert challenger.version != champion.version
    assert float(challenger.tags["sweep.holdout_score"]) < float(champion.tags["sweep.holdout_score"])


def test_a_failing_trial_becomes_a_failed_child_and_the_sweep_completes(tmp_path, stores, capsys):
    # The exponential loss only takes two classes: on iris (three) those trials raise at fit.
    config = small_space(tmp_path, study="failing", text="""\
experiment: failing
study_name: failing
estimator: GradientBoostingClassifier
data: {dataset: iris}
metric: accuracy
cv: 2
sampler: random
seed: 0
n_trials: 3
fixed: {n_estimators: 5, random_state: 0}
params:
  loss: {type: categorical, choices: [exponential, log_loss]}
""")
    code, _, err = run_cli(capsys, *sweep_args(config, stores))
    assert code == 0, err
    study = load_study(stores, "failing")
    states = {t.number: t.state for t in study.trials}
    failed = [n for n, s in states.items() if s == optuna.trial.TrialState.FAIL]
    assert failed and optuna.trial.TrialState.COMPLETE in states.values()
    assert f"trial {failed[0]} failed: " in err and "Traceback" not in err
    _, children = runs_of(stores["tracking_uri"], "failing")
    by_number = {int(r.data.tags["sweep.trial_number"]): r for r in children}
    for number in failed:
        run = by_number[number]
        assert run.info.status == "FAILED"
        assert run.data.params == {"loss": "exponential"}
        assert "ValueError" in run.data.tags["sweep.error"]
        assert "accuracy" not in run.data.metrics  # a failed trial has no score, never NaN
        assert all(math.isfinite(v) for v in run.data.metrics.values())


def test_too_many_failures_stop_the_sweep_with_exit_1(tmp_path, stores, capsys):
    config = small_space(tmp_path, study="doomed", text="""\
experiment: doomed
study_name: doomed
estimator: GradientBoostingClassifier
data: {dataset: iris}
metric: accuracy
cv: 2
n_trials: 5
max_failures: 2
fixed: {n_estimators: 5, loss: exponential}
params:
  max_depth: {type: int, low: 1, high: 3}
""")
    code, _, err = run_cli(capsys, *sweep_args(config, stores))
    assert code == 1
    assert "stopped after 3 failed trials (max_failures is 2)" in err
    assert len(load_study(stores, "doomed").trials) == 3


def test_a_user_csv_with_categories_and_missing_values(tmp_path, stores, capsys):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame({
        "customer_id": np.arange(n),
        "plan": rng.choice(["basic", "pro", "team"], n),
        "tenure": rng.integers(1, 60, n).astype(float),
        "spend": rng.normal(50, 10, n),
    })
    frame.loc[::7, "tenure"] = np.nan
    frame.loc[::11, "plan"] = None
    frame["churned"] = np.where((frame["plan"] == "basic") & (frame["spend"] < 52), "yes", "no")
    frame.to_csv(tmp_path / "churn.csv", index=False)
    config = small_space(tmp_path, study="churn", text="""\
experiment: churn
estimator: GradientBoostingClassifier
data: {path: churn.csv, target: churned, drop: [customer_id]}
metric: accuracy
cv: 2
n_trials: 3
fixed: {n_estimators: 10}
params:
  max_depth: {type: int, low: 1, high: 3}
""")
    code, _, err = run_cli(capsys, *sweep_args(config, stores))
    assert code == 0, err
    mlflow.set_tracking_uri(stores["tracking_uri"])
    model = mlflow.pyfunc.load_model("models:/churn@champion")
    raw = frame.drop(columns=["churned"]).head(20)
    assert set(model.predict(raw)) <= {"yes", "no"}


def test_python_sweep_py_behaves_like_the_console_script(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from conftest import ROOT

    console_script = shutil.which("sweep", path=str(Path(sys.executable).parent))
    assert console_script, "the project is not installed in this environment"
    results = [
        subprocess.run([*command, "validate", "--config", str(ROOT / "search_space.yaml")],
                       capture_output=True, text=True, cwd=tmp_path)
        for command in ([sys.executable, str(ROOT / "sweep.py")], [console_script])
    ]
    for result in results:
        assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")


def test_end_to_end_against_a_real_mlflow_server(mlflow_server, tmp_path, capsys):
    from sklearn.datasets import load_breast_cancer

    stores = {"tracking_uri": mlflow_server, "storage": str(tmp_path / "optuna.journal")}
    config = small_space(tmp_path, study="served", experiment="served", n_trials=3)
    code, out, err = run_cli(capsys, *sweep_args(config, stores))
    assert code == 0, err
    study = load_study(stores, "served")
    parents, children = runs_of(mlflow_server, "served")
    assert len(parents) == 1 and len(children) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert json.loads(out)["trial"] == study.best_trial.number, out
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model("models:/served@champion")
    assert len(model.predict(load_breast_cancer(as_frame=True).data.head(4))) == 4


def test_an_unreachable_tracking_server_is_refused_before_any_trial(tmp_path, capsys):
    config = small_space(tmp_path)
    port = __import__("conftest").free_port()
    code, _, err = run_cli(capsys, "run", "-q", "--config", str(config),
                           "--tracking-uri", f"http://user:s3cret@127.0.0.1:{port}")
    assert code == 2
    assert err.startswith(f"sweep: tracking URI http://user:***@127.0.0.1:{port}: cannot be used")
    assert "s3cret" not in err and "Traceback" not in err
    assert not (tmp_path / "optuna.journal").exists()


def test_pruned_trials_grow_fewer_trees_and_keep_their_curve(tmp_path, stores, capsys):
    config = small_space(tmp_path, study="pruned", text="""\
experiment: pruned
study_name: pruned
estimator: GradientBoostingClassifier
data: {dataset: breast_cancer}
metric: roc_auc
cv: 2
seed: 3
sampler: random
pruner: successive_halving
n_trials: 10
fixed: {n_estimators: 40, random_state: 0}
params:
  learning_rate: {type: float, low: 0.001, high: 0.5, log: true}
  max_depth: {type: int, low: 1, high: 4}
""")
    code, _, err = run_cli(capsys, *sweep_args(config, stores))
    assert code == 0, err
    study = load_study(stores, "pruned")
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert pruned and completed and len(pruned) + len(completed) == 10
    assert all(max(t.intermediate_values) < 40 for t in pruned)  # trees grown before the prune
    assert all(max(t.intermediate_values) == 40 for t in completed)
    client = MlflowClient(stores["tracking_uri"])
    _, children = runs_of(stores["tracking_uri"], "pruned")
    by_number = {int(r.data.tags["sweep.trial_number"]): r for r in children}
    for trial in pruned:
        run = by_number[trial.number]
        assert run.info.status == "KILLED"
        curve = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "roc_auc")}
        assert curve == pytest.approx(trial.intermediate_values)


def test_a_stale_journal_lock_of_a_dead_process_does_not_hang_the_resume(finished, stores, capsys):
    import time

    journal = stores["storage"]
    os.symlink(journal, journal + ".lock")  # what a process killed while writing leaves behind
    started = time.monotonic()
    code, _, err = run_cli(capsys, *sweep_args(finished["config"], stores, "--n-trials", "5"))
    assert code == 0, err
    assert time.monotonic() - started < 60
    assert len(load_study(stores, "small").trials) == 5


def test_the_champion_is_served_by_mlflow_models_serve(shared, tmp_path):
    stores = shared["stores"]
    import shutil
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    from sklearn.datasets import load_breast_cancer

    from conftest import free_port

    port = free_port()
    mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    server = subprocess.Popen(
        [mlflow_cli, "models", "serve", "-m", "models:/exp@champion", "--env-manager", "local",
         "--host", "127.0.0.1", "-p", str(port)],
        # as in an activated venv: MLflow starts the venv's uvicorn by name
        env={**os.environ, "MLFLOW_TRACKING_URI": stores["tracking_uri"],
             "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        rows = load_breast_cancer(as_frame=True).data.head(3)
        body = json.dumps({"dataframe_split": rows.to_dict(orient="split")}).encode()
        deadline = time.monotonic() + 120
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    predictions = json.loads(response.read())["predictions"]
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the model server did not start"
                time.sleep(0.5)
        assert len(predictions) == 3 and set(predictions) <= {0, 1}
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
