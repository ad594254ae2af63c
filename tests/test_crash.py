"""Real sweeps in subprocesses, killed with SIGKILL, SIGINT and SIGTERM, then resumed: nothing lost."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow import MlflowClient

from conftest import ROOT, small_space
from gbsweep import storages

SLOW_SPACE = """\
experiment: crash
study_name: crash
estimator: GradientBoostingClassifier
data: {dataset: make_classification, options: {n_samples: 1500, n_features: 20}}
metric: accuracy
cv: 3
seed: 1
sampler: random
n_trials: 6
fixed: {n_estimators: 150, random_state: 0}
params:
  learning_rate: {type: float, low: 0.05, high: 0.5, log: true}
  max_depth: {type: int, low: 2, high: 4}
"""


QUICK_SPACE = SLOW_SPACE.replace("n_estimators: 150", "n_estimators: 10")  # where no trial must be caught mid-fit


def start_sweep(tmp_path: Path, stores: dict, *extra: str, text: str = SLOW_SPACE) -> subprocess.Popen:
    config = small_space(tmp_path, study="crash", text=text)
    return subprocess.Popen(
        [sys.executable, str(ROOT / "sweep.py"), "run", "-q", "--config", str(config),
         "--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"], *extra],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def trials(stores: dict) -> list:
    try:
        study = optuna.load_study(study_name="crash", storage=storages.open_storage(stores["storage"]))
    except (KeyError, Exception):
        return []
    return study.get_trials(deepcopy=False)


def wait_until_mid_trial(process: subprocess.Popen, stores: dict, completed: int, timeout: float = 120,
                         fitted_s: float = 0.5) -> None:
    """Until `completed` trials are done and the next one has fitted for `fitted_s`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        current = trials(stores)
        done = sum(t.state.name == "COMPLETE" for t in current)
        running = [t for t in current if t.state.name == "RUNNING"]
        if done >= completed and running and time.time() - running[0].datetime_start.timestamp() >= fitted_s:
            return
        time.sleep(0.1)
    raise AssertionError("the sweep did not reach the point to interrupt it")


def child_runs(tracking_uri: str) -> tuple[list, list]:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("crash")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def assert_nothing_lost(stores: dict, n_trials: int) -> list:
    """One parent; each trial exactly one child run, with its state; the study's total reached."""
    final = trials(stores)
    counted = [t for t in final if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(counted) == n_trials
    assert not [t for t in final if t.state.name == "RUNNING"]
    parents, children = child_runs(stores["tracking_uri"])
    assert len(parents) == 1
    numbers = collections.Counter(int(r.data.tags["sweep.trial_number"]) for r in children)
    assert numbers == collections.Counter(t.number for t in final), "one child run per trial, no duplicates"
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    by_number = {int(r.data.tags["sweep.trial_number"]): r for r in children}
    for trial in final:
        run = by_number[trial.number]
        assert run.info.status == status[trial.state.name], trial.number
        assert run.data.params == {k: str(v) for k, v in trial.params.items()}
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    return final


def test_sigkill_mid_trial_then_resume_loses_nothing(tmp_path, stores):
    process = start_sweep(tmp_path, stores)
    wait_until_mid_trial(process, stores, completed=2)
    victim = next(t for t in trials(stores) if t.state.name == "RUNNING")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert trials(stores)[victim.number].state.name == "RUNNING"  # as the dead process left it

    resumed = start_sweep(tmp_path, stores)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    final = assert_nothing_lost(stores, n_trials=6)
    assert final[victim.number].state.name == "FAIL"
    retries = [t for t in final if t.user_attrs.get("sweep.retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].params == victim.params  # its params were tried again
    assert retries[0].state.name == "COMPLETE"
    assert json.loads(out)["study"] == "crash"


def test_a_killed_n_jobs_worker_s_trial_is_retried_and_the_sweep_ends(tmp_path, stores):
    # make chaos found it: `sweep run --n-jobs 2` waited forever for the trial of its SIGKILLed
    # worker, which it had not reaped yet: a zombie's /proc entry still shows its start time.
    process = start_sweep(tmp_path, stores, "--n-jobs", "2")
    try:
        victim = wait_until_forked_worker_mid_trial(process, stores)
        os.kill(int(victim.user_attrs["sweep.worker"].split(":")[1]), signal.SIGKILL)
        _, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, err
    final = assert_nothing_lost(stores, n_trials=6)
    assert final[victim.number].state.name == "FAIL"
    retries = [t for t in final if t.user_attrs.get("sweep.retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].params == victim.params


def wait_until_forked_worker_mid_trial(process: subprocess.Popen, stores: dict, timeout: float = 120):
    """A trial of the forked worker (not `sweep run` itself) once it has fitted for a moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        forked = [t for t in trials(stores) if t.state.name == "RUNNING"
                  and t.user_attrs.get("sweep.worker", "::").split(":")[1] not in ("", str(process.pid))]
        if forked and time.time() - forked[0].datetime_start.timestamp() > 0.5:
            return forked[0]
        time.sleep(0.1)
    raise AssertionError("the forked worker did not start a trial")


def test_the_recorder_of_a_sweep_killed_at_its_start_creates_no_parent_run(tmp_path, stores):
    # make chaos found it: the recorder of a `sweep run` killed while MLflow was still opening went
    # on serving what the dead sweep had queued, created a parent run after the restarted sweep had
    # read the study, and the study ended with two parent runs.
    process = start_sweep(tmp_path, stores)
    deadline = time.monotonic() + 120
    while not [t for t in trials(stores) if t.state.name == "RUNNING"]:  # the parent run is asked for
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    time.sleep(0.2)
    forked = [int(pid) for task in Path(f"/proc/{process.pid}/task").iterdir()
              for pid in (task / "children").read_text().split()]
    process.kill()
    process.wait()
    while any(_running(pid) for pid in forked):
        assert time.monotonic() < deadline, "the recorder outlived its sweep"
        time.sleep(0.05)
    study = optuna.load_study(study_name="crash", storage=storages.open_storage(stores["storage"]))
    assert "sweep.parent_run_id" not in study.user_attrs

    resumed = start_sweep(tmp_path, stores)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert_nothing_lost(stores, n_trials=6)  # one parent run

def test_a_recorder_killed_while_mlflow_creates_a_new_store_leaves_nothing_unusable(tmp_path, stores, monkeypatch):
    # make chaos found it: MLflow creates a new SQLite store in migrations that are not one
    # transaction, and a recorder killed midway left an mlflow.db that every later command refused
    # ('table _alembic_tmp_jobs already exists'). The migrations run once per MLflow version, on an
    # empty store in the cache folder, made under a side name (the creator's pid) and linked in
    # place only once whole; a new store is a copy of it, made the same way.
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))  # no template yet: this sweep migrates one
    process = start_sweep(tmp_path, stores, text=QUICK_SPACE)
    deadline = time.monotonic() + 120
    while not (side := list(cache.glob("sweep/mlflow-*.db.new-*"))):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    os.kill(int(side[0].name.split(".new-")[1].split("-")[0]), signal.SIGKILL)  # its creator: the recorder
    assert not (tmp_path / "mlflow.db").exists() and not list(cache.glob("sweep/mlflow-*.db"))
    _, err = process.communicate(timeout=300)
    assert process.returncode == 1 and "run the same command again" in err and "Traceback" not in err, err

    resumed = start_sweep(tmp_path, stores, text=QUICK_SPACE)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert_nothing_lost(stores, n_trials=6)
    client = MlflowClient(stores["tracking_uri"])
    versions = client.search_model_versions("name='crash'")
    assert [v.version for v in versions] == [client.get_model_version_by_alias("crash", "champion").version]
    assert [p.name for p in (cache / "sweep").iterdir()] == [f"mlflow-{mlflow.__version__}.db"], \
        "the killed creator's side file is cleared away"
    assert not list(tmp_path.glob("mlflow.db.new-*"))


def test_a_store_a_cut_off_migration_left_is_refused_before_anything_starts(tmp_path, stores):
    # The state such a kill left before (an older sweep, or MLflow's own tools, can still leave it).
    import sqlite3

    start_sweep(tmp_path, stores, text=QUICK_SPACE).communicate(timeout=300)
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # as the cut-off batch migration of 'jobs' left it
        db.execute("CREATE TABLE _alembic_tmp_jobs (id VARCHAR(36) NOT NULL)")
    config = small_space(tmp_path, study="crash", text=QUICK_SPACE.replace("n_trials: 6", "n_trials: 8"))
    refused = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "run", "-q", "--config", str(config),
         "--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"]],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"sweep: tracking URI {stores['tracking_uri']}: cannot be used: a migration of its tables was cut off"
        " midway (it left the table _alembic_tmp_jobs); restore the file from a backup, or move it away and"
        " run the same command: a new store is made and every trial is logged to it again."]
    assert len(trials(stores)) == 6, "no trial was started"

    (tmp_path / "mlflow.db").rename(tmp_path / "cut-off.db")  # what the line says to do
    again = start_sweep(tmp_path, stores, text=QUICK_SPACE)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert_nothing_lost(stores, n_trials=6)  # every trial logged to the new store


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# SIGTERM only: test_signals ends `sweep run` with SIGINT and SIGTERM on every path and checks the
# same end state; what this test adds is the resume after it, the same for both.
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143)])
def test_interrupt_fails_the_running_trial_promotes_the_best_so_far_and_resumes(tmp_path, stores, signum, code):
    process = start_sweep(tmp_path, stores)
    wait_until_mid_trial(process, stores, completed=2)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    assert f"interrupted by {signal.Signals(signum).name}" in err and "Traceback" not in err
    states = [t.state.name for t in trials(stores)]
    assert "RUNNING" not in states and "FAIL" in states
    parents, children = child_runs(stores["tracking_uri"])
    assert not [r for r in children if r.info.status == "RUNNING"]
    assert parents[0].info.status == "KILLED"
    client = MlflowClient(stores["tracking_uri"])
    champion = client.get_model_version_by_alias("crash", "champion")
    best = json.loads(out)
    assert champion.tags["sweep.trial_number"] == str(best["trial"])

    resumed = start_sweep(tmp_path, stores)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert_nothing_lost(stores, n_trials=6)


def test_interrupt_with_no_promote_promotes_nothing(tmp_path, stores):
    process = start_sweep(tmp_path, stores, "--no-promote-on-interrupt")
    wait_until_mid_trial(process, stores, completed=1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert (process.returncode, out) == (130, ""), err
    assert MlflowClient(stores["tracking_uri"]).search_registered_models() == []


def sweep_with_two_jobs(tmp_path: Path, stores: dict, text: str, n_trials: int) -> list:
    """`sweep run --n-jobs 2` to its end; the study's trials, each with its one child run."""
    config = small_space(tmp_path, study="crash", text=text)
    result = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "run", "-q", "--config", str(config), "--n-jobs", "2",
         "--log-format", "json", "--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"]],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    final = assert_nothing_lost(stores, n_trials=n_trials)
    assert len({t.user_attrs["sweep.worker"] for t in final}) == 2, "both processes ran trials"
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert sorted(line["number"] for line in lines) == [t.number for t in final], "a JSON line per trial"
    return final


def test_n_jobs_two_workers_one_parent_no_duplicates(tmp_path, stores):
    text = SLOW_SPACE.replace("n_estimators: 150", "n_estimators: 100").replace("n_trials: 6", "n_trials: 12")
    assert len(sweep_with_two_jobs(tmp_path, stores, text, n_trials=12)) == 12
    assert not os.environ.get("SWEEP_STORAGE")


def test_tracking_server_outage_then_sync_rebuilds_every_run(tmp_path, mlflow_service, capsys):
    from gbsweep import cli

    stores = {"tracking_uri": mlflow_service.url, "storage": str(tmp_path / "optuna.journal")}
    config = small_space(tmp_path, study="crash", text=SLOW_SPACE.replace("experiment: crash", "experiment: outage")
                         .replace("n_estimators: 150", "n_estimators: 40").replace("n_trials: 6", "n_trials: 12"))
    command = [sys.executable, str(ROOT / "sweep.py"), "run", "-q", "--config", str(config),
               "--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"]]
    # MLflow's own retries off, so that each request to the stopped server fails at once
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    try:
        wait_until_mid_trial(process, stores, completed=2, fitted_s=0)  # its trials are short: any will do
        mlflow_service.stop()
        _, err = process.communicate(timeout=600)  # the sweep ends while the server is away
    finally:
        mlflow_service.start()
    assert process.returncode == 1, err
    assert "the tracking store failed while finishing the sweep" in err and "`sweep sync`" in err
    assert "Traceback" not in err
    assert sum(t.state.name == "COMPLETE" for t in trials(stores)) == 12  # the trials went on

    for attempt in (1, 2):
        code = cli.main(["sync", "--study-name", "crash", "--storage", stores["storage"],
                           "--tracking-uri", stores["tracking_uri"]])
        synced = capsys.readouterr().err
        assert code == 0, synced
        if attempt == 1:
            assert "sync: 0 child runs" not in synced
        else:
            assert "sync: 0 child runs of study 'crash' updated" in synced  # idempotent

    promoted = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert promoted.returncode == 0, promoted.stderr
    assert "0 trials ran now" in promoted.stderr and "@champion" in promoted.stderr
    client = MlflowClient(stores["tracking_uri"])
    experiment_id = client.get_experiment_by_name("outage").experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    final = trials(stores)
    assert collections.Counter(int(r.data.tags["sweep.trial_number"]) for r in children) == \
        collections.Counter(t.number for t in final)
    by_number = {int(r.data.tags["sweep.trial_number"]): r for r in children}
    for trial in final:
        run = by_number[trial.number]
        assert run.data.params == {k: str(v) for k, v in trial.params.items()}
        assert run.info.status == "FINISHED"
        assert run.data.metrics["accuracy"] == pytest.approx(trial.value)


HIST_SPACE = """\
experiment: crash
study_name: crash
estimator: HistGradientBoostingRegressor
data: {dataset: make_regression, options: {n_samples: 600, n_features: 8}}
metric: r2
cv: 2
n_trials: 6
fixed: {max_iter: 20, random_state: 0}
params:
  learning_rate: {type: float, low: 0.05, high: 0.3, log: true}
  max_leaf_nodes: {type: int, low: 4, high: 16}
"""


def test_n_jobs_two_hist_gradient_boosting_workers_share_the_cores(tmp_path, stores):
    sweep_with_two_jobs(tmp_path, stores, HIST_SPACE, n_trials=6)


def test_a_worker_process_caps_its_openmp_threads_to_its_share():
    from gbsweep import cli

    args = cli._parser().parse_args(["run", "--n-jobs", "2"])
    assert cli._options(args).threads == max(1, (os.cpu_count() or 1) // 2)
    assert cli._options(cli._parser().parse_args(["run"])).threads is None  # one job: all cores
    assert cli._options(cli._parser().parse_args(["worker", "--threads", "3"])).threads == 3
    code = ("import sklearn.ensemble, threadpoolctl; from gbsweep import workers; workers.limit_threads(1);"
            " print(sorted({i['num_threads'] for i in threadpoolctl.threadpool_info()}))")
    capped = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert capped.stdout.strip() == "[1]"


def test_a_journal_cut_mid_record_by_an_os_crash_is_repaired_and_the_sweep_resumes(tmp_path, stores, capsys):
    """An OS crash before the disk write loses the journal's tail, cutting a record in two."""
    from gbsweep import cli

    config = small_space(tmp_path, study="crash", experiment="crash", n_trials=4)
    command = [sys.executable, str(ROOT / "sweep.py"), "run", "-q", "--config", str(config),
               "--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"]]
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    journal = Path(stores["storage"])
    lines = journal.read_bytes().splitlines(keepends=True)
    # the record that completed the last trial: cut in its middle, everything after it lost
    torn = max(i for i, line in enumerate(lines) if json.loads(line)["op_code"] == 6)
    journal.write_bytes(b"".join(lines[:torn]) + lines[torn][:len(lines[torn]) // 2])

    code = cli.main(["best", "--study-name", "crash", "--storage", stores["storage"]])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == (f"sweep: warning: {journal}: its last record was cut off ({len(lines[torn]) // 2} bytes,"
                   f" as a crash before the disk write can leave it); read the {torn} records before it.\n")
    assert json.loads(out)["trial"] in range(3)  # the last trial's result was in the lost tail
    assert journal.read_bytes() == b"".join(lines[:torn])

    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "warning" not in resumed.stderr  # repaired once, for good
    final = assert_nothing_lost(stores, n_trials=4)
    assert [t.state.name for t in final].count("FAIL") == 1  # the trial whose end was lost, retried
    for line in journal.read_bytes().splitlines(keepends=True):
        assert line.endswith(b"\n") and isinstance(json.loads(line), dict)
