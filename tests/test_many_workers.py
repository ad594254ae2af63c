"""Many workers on one study over PostgreSQL and an `mlflow server` with a PostgreSQL backend."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import optuna
from mlflow import MlflowClient

from conftest import ROOT, small_space
from gbsweep import keys, storages

SPACE = """\
experiment: {experiment}
study_name: big
estimator: GradientBoostingClassifier
data: {{dataset: make_classification, options: {{n_samples: 1000, n_features: 20}}}}
metric: accuracy
cv: 2
seed: 5
n_trials: {n_trials}
fixed: {{n_estimators: {trees}, random_state: 0}}
params:
  learning_rate: {{type: float, low: 0.05, high: 0.5, log: true}}
  max_depth: {{type: int, low: 2, high: 4}}
"""
# Heartbeats every second; a silent trial is failed after 5 s (the defaults, 10 s and 60 s, suit
# real clusters; a test should not wait a minute).
FAST_HEARTBEATS = {"SWEEP_HEARTBEAT_S": "1", "SWEEP_GRACE_S": "5"}


def launch(tmp_path, command: str, storage: str, tracking: str, *extra: str,
           env: dict | None = None, prefix: list[str] | None = None) -> subprocess.Popen:
    """`sweep COMMAND` on the test's space and stores; `prefix` runs it elsewhere (tests/hosts.py)."""
    config = tmp_path / "space.yaml"
    return subprocess.Popen(
        [*(prefix or []), sys.executable, str(ROOT / "sweep.py"), command, "-q", "--config", str(config),
         "--storage", storage, "--tracking-uri", tracking, *extra],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **FAST_HEARTBEATS, **(env or {})},
    )


def load(storage: str) -> optuna.Study:
    return optuna.load_study(study_name="big", storage=storages.open_storage(storage))


def check_study_and_runs(storage: str, tracking: str, experiment: str, n_trials: int) -> list:
    final = load(storage).get_trials(deepcopy=False)
    numbers = [t.number for t in final]
    assert len(numbers) == len(set(numbers))
    counted = [t for t in final if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(counted) == n_trials, collections.Counter(t.state.name for t in final)
    assert not [t for t in final if t.state.name == "RUNNING"]
    client = MlflowClient(tracking)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    surplus = {t.number for t in final if t.user_attrs.get("sweep.surplus")}
    assert collections.Counter(int(r.data.tags["sweep.trial_number"]) for r in children) == \
        collections.Counter(n for n in numbers if n not in surplus)
    assert not [r for r in children if r.info.status == "RUNNING"]
    versions = client.search_model_versions(f"name='{experiment}'")
    assert len(versions) == 1
    return final


def note_stamps(storage: str) -> Callable[[], list[tuple[int, bool]]]:
    """A trigger notes, as each trial is stamped by its worker, whether it had a heartbeat yet;
    the returned call reads the notes (trial id, had a heartbeat) once, and closes the connection."""
    import psycopg2

    storages.open_storage(storage)  # Optuna's tables
    connection = psycopg2.connect(storage)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"""
            CREATE TABLE stamps (trial_id int, had_heartbeat bool);
            CREATE FUNCTION note_stamp() RETURNS trigger AS $$ BEGIN
                IF NEW.key = '{keys.WORKER}' THEN
                    INSERT INTO stamps SELECT NEW.trial_id,
                        EXISTS (SELECT 1 FROM trial_heartbeats WHERE trial_id = NEW.trial_id);
                END IF;
                RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER note_stamp BEFORE INSERT ON trial_user_attributes
                FOR EACH ROW EXECUTE FUNCTION note_stamp();""")

    def read() -> list[tuple[int, bool]]:
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT trial_id, had_heartbeat FROM stamps ORDER BY trial_id")
            noted = cursor.fetchall()
        connection.close()
        return noted

    return read


def test_one_run_and_three_workers_started_together(tmp_path, pg_database, mlflow_server):
    small_space(tmp_path, study="space", text=SPACE.format(experiment="together", n_trials=16, trees=60))
    storage = f"postgresql://postgres@127.0.0.1:5432/{pg_database}"
    stamps = note_stamps(storage)
    processes = [launch(tmp_path, "run", storage, mlflow_server)]
    processes += [launch(tmp_path, "worker", storage, mlflow_server) for _ in range(3)]
    outputs = [p.communicate(timeout=400) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], [err for _, err in outputs]
    final = check_study_and_runs(storage, mlflow_server, "together", 16)
    assert len({t.user_attrs["sweep.worker"] for t in final}) >= 3, "the workers shared the trials"
    # A trial stamped before its first heartbeat is never stale to Optuna, nor unclaimed: a worker
    # cut off in between would leave it running for good. Without the wait, most trials raced so.
    noted = stamps()
    assert len(noted) == len(final)
    assert [trial_id for trial_id, had_heartbeat in noted if not had_heartbeat] == []


def test_a_worker_killed_mid_trial_is_replaced_and_nothing_is_lost(tmp_path, pg_database, mlflow_server):
    small_space(tmp_path, study="space", text=SPACE.format(experiment="killed", n_trials=10, trees=250))
    storage = f"postgresql://postgres@127.0.0.1:5432/{pg_database}"
    main = launch(tmp_path, "run", storage, mlflow_server)
    worker = launch(tmp_path, "worker", storage, mlflow_server)
    deadline = time.monotonic() + 180
    victim = None
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            running = load(storage).get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:
            continue
        victim = next((t for t in running  # one of the worker's trials, fitting (both its params drawn)
                       if f":{worker.pid}:" in t.user_attrs.get("sweep.worker", "")
                       and set(t.params) == {"learning_rate", "max_depth"}), None)
    assert victim is not None, "the worker never ran a trial"
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    _, err = main.communicate(timeout=400)
    assert main.returncode == 0, err
    final = check_study_and_runs(storage, mlflow_server, "killed", 10)
    assert final[victim.number].state.name == "FAIL"  # failed by its silent heartbeat
    retried = [t for t in final if t.system_attrs.get("failed_trial") == victim.number]
    assert retried and retried[0].params == victim.params  # the same point, tried again
