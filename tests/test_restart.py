"""A store restarted mid-sweep (issue 12): PostgreSQL under `sweep run` and two `sweep worker`s,
and the `mlflow server` under a `sweep run`. Nothing lost, nothing duplicated, one parent run,
one promotion."""

from __future__ import annotations

import subprocess
import sys
import time

import optuna
import pytest
from mlflow import MlflowClient

from conftest import ROOT, cluster_command, restart_postgres, small_space, why_no_cluster
from test_many_workers import SPACE, check_study_and_runs, launch, load


@pytest.fixture
def restartable_postgres() -> list[str]:
    """The command that restarts the local PostgreSQL cluster; skip where there is none to restart."""
    reason = why_no_cluster()
    if reason:
        pytest.skip(reason)
    return cluster_command()


def wait_until(condition, what: str, processes: list[subprocess.Popen], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            assert process.poll() is None, (what, process.communicate())
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


def running_with_params(storage: str) -> list:
    try:
        trials = load(storage).get_trials(deepcopy=False)
    except KeyError:
        return []
    return [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and t.params]


def completed(storage: str) -> int:
    try:
        trials = load(storage).get_trials(deepcopy=False)
    except KeyError:
        return 0
    return sum(t.state.name == "COMPLETE" for t in trials)


def assert_champion(tracking: str, model_name: str) -> None:
    client = MlflowClient(tracking)
    versions = client.search_model_versions(f"name='{model_name}'")
    assert len(versions) == 1
    assert client.get_model_version_by_alias(model_name, "champion").version == versions[0].version


@pytest.mark.parametrize("outage_s", ["30", "0.2"], ids=["rides-through", "stops-then-resumes"])
def test_postgres_restart_under_a_run_and_two_workers(tmp_path, restartable_postgres, pg_database, mlflow_server,
                                                      outage_s):
    """With the default patience the sweep waits the restart out; with less patience than the
    restart takes, a process that needed the database stops with one line, and the same commands
    run again finish the sweep. Either way nothing is lost or duplicated."""
    experiment = f"pgrestart-{outage_s}"  # one per case: the server is the session's
    small_space(tmp_path, study="space", text=SPACE.format(experiment=experiment, n_trials=12, trees=80))
    storage = f"postgresql://postgres@127.0.0.1:5432/{pg_database}"
    # A grace longer than the restart: a live trial's heartbeat may be silent for all of it.
    env = {"SWEEP_OUTAGE_S": outage_s, "SWEEP_GRACE_S": "20"}
    commands = ["run", "worker", "worker"]
    processes = [launch(tmp_path, command, storage, mlflow_server, env=env) for command in commands]
    # Mid-sweep: trials done, and trials of several processes fitting (their heartbeats going).
    wait_until(lambda: completed(storage) >= 2 and len(running_with_params(storage)) >= 2,
               "two trials fitting after two completed", processes)
    if outage_s == "30":
        downtime = restart_postgres(restartable_postgres)
    else:  # down until a process needed it (a trial fitting through a short restart does not notice)
        downtime = restart_postgres(restartable_postgres, lambda: wait_until(
            lambda: any(p.poll() is not None for p in processes), "a process stopped", [], timeout=60))
    errors = finish(processes, storage)
    codes = [p.returncode for p in processes]
    print(f"PostgreSQL restart took {downtime:.1f} s; exit codes {codes}")
    assert not [err for err in errors if "Traceback" in err], errors
    if outage_s == "30":
        assert codes == [0, 0, 0], errors
    else:
        assert 1 in codes and set(codes) <= {0, 1}, errors
        stopped = [err for code, err in zip(codes, errors, strict=True) if code]
        assert all(err.splitlines() == [
            f"sweep: storage {storage}: its database did not answer for 0.2 s ({lost_connection(err)});"
            " the finished trials are safe in it: run the same command again once it is back."]
            for err in stopped), stopped
        again = [launch(tmp_path, command, storage, mlflow_server)
                 for command, code in zip(commands, codes, strict=True) if code]
        rerun = finish(again, storage)
        assert [p.returncode for p in again] == [0] * len(again), rerun
    check_study_and_runs(storage, mlflow_server, experiment, 12)
    assert_champion(mlflow_server, experiment)


def finish(processes: list[subprocess.Popen], storage: str, timeout: float = 400) -> list[str]:
    """Each process's stderr once it ended; the trials' states when one hangs."""
    errors = []
    for process in processes:
        try:
            errors.append(process.communicate(timeout=timeout)[1])
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            states = [(t.number, t.state.name, sorted(t.user_attrs)) for t in load(storage).trials]
            raise AssertionError(f"{process.args[2]} hung; the trials: {states}") from None
    return errors


def lost_connection(err: str) -> str:
    """The driver's words between the parentheses of the one line (they vary with the moment)."""
    return err[err.index("s (") + 3:err.index("); the finished")] if "s (" in err else ""


RESTART_SPACE = """\
experiment: mlrestart
study_name: mlrestart
estimator: GradientBoostingClassifier
data: {dataset: make_classification, options: {n_samples: 800, n_features: 20}}
metric: accuracy
cv: 2
seed: 3
sampler: random
n_trials: 40
fixed: {n_estimators: 40, random_state: 0}
params:
  learning_rate: {type: float, low: 0.05, high: 0.5, log: true}
  max_depth: {type: int, low: 2, high: 4}
"""


def test_mlflow_server_restart_mid_run(tmp_path, mlflow_service):
    config = small_space(tmp_path, study="mlrestart", text=RESTART_SPACE)
    storage = str(tmp_path / "optuna.journal")
    command = [sys.executable, str(ROOT / "sweep.py"), "run", "-q", "--config", str(config),
               "--storage", storage, "--tracking-uri", mlflow_service.url]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def study_trials() -> list:
        try:
            study = optuna.load_study(study_name="mlrestart", storage=optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(storage)))
        except (KeyError, FileNotFoundError):
            return []
        return study.get_trials(deepcopy=False)

    wait_until(lambda: sum(t.state.name == "COMPLETE" for t in study_trials()) >= 3, "three trials done", [process])
    started = time.monotonic()
    mlflow_service.stop()
    mlflow_service.start()
    downtime = time.monotonic() - started
    _, err = process.communicate(timeout=600)
    print(f"mlflow server restart took {downtime:.1f} s; sweep exit {process.returncode}", err)
    assert "Traceback" not in err
    if process.returncode != 0:  # it ended while the server was away: one line, then the same command
        said = [line for line in err.splitlines() if line.startswith("sweep:")]
        assert process.returncode == 1 and len(said) == 1 and "tracking store" in said[0], err
        again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
    final = study_trials()
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in final) == 40
    client = MlflowClient(mlflow_service.url)
    experiment_id = client.get_experiment_by_name("mlrestart").experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    assert sorted(int(r.data.tags["sweep.trial_number"]) for r in children) == [t.number for t in final]
    assert not [r for r in children if r.info.status == "RUNNING"]
    assert_champion(mlflow_service.url, "mlrestart")
