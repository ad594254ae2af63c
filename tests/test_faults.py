"""Faults of the machine under a real sweep: a disk that fills up (a small tmpfs, which only root can
mount), then space freed and the same command run again: one line, nothing corrupted, nothing lost.

Skipped, with the reason, where a tmpfs cannot be mounted.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from conftest import ROOT, small_space
from gbsweep import jobs, lifecycle, storages, studies, workers
from gbsweep.errors import DiskFull
from gbsweep.tracking import Tracker

SPACE = """\
experiment: disk
study_name: disk
estimator: GradientBoostingClassifier
data: {dataset: make_classification, options: {n_samples: 1200, n_features: 20}}
metric: accuracy
cv: 3
seed: 1
sampler: random
n_trials: 16
fixed: {n_estimators: 60, random_state: 0}
params:
  learning_rate: {type: float, low: 0.05, high: 0.5, log: true}
  max_depth: {type: int, low: 2, high: 4}
"""
N_TRIALS = 16
FULL_LINE = re.compile(r"sweep: no space left on the device holding (\S+) \((/\S*)\); free some space and run"
                       r" the same command again to resume\.")
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


@pytest.fixture
def mount():
    """mount(folder, size): a tmpfs of that size on the folder, unmounted when the test ends."""
    mounted: list[Path] = []

    def mount_tmpfs(folder: Path, size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("a full disk is made with a small tmpfs, and only root can mount one")
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    try:
        yield mount_tmpfs
    finally:
        for folder in reversed(mounted):
            if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(folder)], check=True)  # still busy: detach it


def fill(folder: Path, leave: int = 0) -> Path:
    """Write a filler file until the folder's device is full (or has `leave` bytes left)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out:
        try:
            if leave:
                out.write(b"\0" * (os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize - leave))
            else:
                while out.write(b"\0" * 65536):
                    pass
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def start_sweep(folder: Path) -> subprocess.Popen:
    """`sweep run` in the folder with its default stores: optuna.journal, mlflow.db, mlruns/."""
    (folder / "search_space.yaml").write_text(SPACE)
    # A trial whose worker could not even stamp it is failed after SWEEP_GRACE_S: 3 s, not 60.
    return subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "run", "-q"], cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SWEEP_GRACE_S": "3"})


def trials(folder: Path) -> list:
    if not (folder / "optuna.journal").exists():
        return []
    try:
        study = optuna.load_study(study_name="disk", storage=storages.open_storage(str(folder / "optuna.journal")))
    except KeyError:  # not created yet
        return []
    return study.get_trials(deepcopy=False)


def wait_completed(process: subprocess.Popen, folder: Path, completed: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while sum(t.state.name == "COMPLETE" for t in trials(folder)) < completed:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{completed} trials did not complete in {timeout} s"
        time.sleep(0.1)


def assert_intact(folder: Path) -> None:
    """Every journal record whole, and the MLflow database sound."""
    data = (folder / "optuna.journal").read_bytes()
    assert data.endswith(b"\n")
    for line in data.splitlines():
        json.loads(line)
    with sqlite3.connect(f"file:{folder / 'mlflow.db'}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def assert_nothing_lost(folder: Path, before: list) -> None:
    """The study's total reached, the trials of before kept; one parent run, one child run per
    trial with its state, one model version promoted."""
    final = trials(folder)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in final) == N_TRIALS
    assert not [t for t in final if t.state.name == "RUNNING"]
    for trial in before:
        if trial.state.name == "COMPLETE":
            assert final[trial.number].value == trial.value, trial.number
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("disk").experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [p.info.status for p in parents] == ["FINISHED"]
    kept = [t for t in final if not studies.is_surplus(t)]
    numbers = collections.Counter(int(r.data.tags["sweep.trial_number"]) for r in children)
    assert numbers == collections.Counter(t.number for t in kept), "one child run per trial"
    by_number = {int(r.data.tags["sweep.trial_number"]): r for r in children}
    for trial in kept:
        assert by_number[trial.number].info.status == STATUS[trial.state.name], trial.number
    versions = client.search_model_versions("name = 'disk'")
    assert len(versions) == 1
    assert client.get_model_version_by_alias("disk", "champion").version == versions[0].version


def test_a_disk_that_fills_up_mid_sweep_stops_it_with_one_line_and_the_same_command_resumes(mount, tmp_path):
    disk = mount(tmp_path / "disk", "6m")  # the journal, mlflow.db and mlruns/ (3 MB at the end) on it
    process = start_sweep(disk)
    wait_completed(process, disk, completed=3)
    filler = fill(disk)

    out, err = process.communicate(timeout=300)
    assert process.returncode == 1, err
    assert out == ""
    *before_it, line = err.splitlines()  # that one line, no traceback, no library log
    # The journal's last page may take the remaining trials' records while mlflow.db is full:
    # then the trials end (and say so) and the line comes from logging the results.
    assert all(re.fullmatch(r"study 'disk': \d+ trials ran now, \d+ of 16 counted\.", b) for b in before_it), err
    match = FULL_LINE.fullmatch(line)
    assert match, line
    assert Path(match[2]).is_relative_to(disk), line  # the folder named is on the full disk
    assert_intact(disk)
    before = trials(disk)

    filler.unlink()
    resumed = start_sweep(disk)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert json.loads(out)["study"] == "disk"
    assert_intact(disk)
    assert_nothing_lost(disk, before)


def test_an_artifact_folder_too_full_for_the_results_stops_the_end_and_the_same_command_finishes(mount, tmp_path):
    disk = mount(tmp_path / "disk", "5m")
    artifacts = mount(disk / "mlruns", "4m")  # the trials fit, the plots and the model do not
    filler = fill(artifacts, leave=40_000)

    process = start_sweep(disk)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 1, err
    [line] = err.splitlines()[-1:]
    match = FULL_LINE.fullmatch(line)
    assert match and Path(match[2]).is_relative_to(artifacts), err
    assert "Traceback" not in err and "unexpected" not in err
    assert_intact(disk)
    client = MlflowClient(f"sqlite:///{disk / 'mlflow.db'}")
    [parent] = client.search_runs([client.get_experiment_by_name("disk").experiment_id],
                                  "attributes.run_name = 'disk'")
    assert parent.info.status == "FAILED"  # as for any error; the next run resumes it
    before = trials(disk)

    filler.unlink()
    resumed = start_sweep(disk)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert_nothing_lost(disk, before)
    plots = list((artifacts / parent.info.experiment_id / parent.info.run_id / "artifacts" / "plots").glob("*.png"))
    assert plots and all(p.read_bytes().endswith(b"IEND\xaeB`\x82") for p in plots)  # none cut off


def test_a_journal_record_the_disk_cannot_take_is_not_half_written(mount, tmp_path):
    disk = mount(tmp_path / "disk", "1m")
    journal = disk / "optuna.journal"
    study = optuna.create_study(study_name="j", storage=storages.open_storage(str(journal)))
    filler = fill(disk)
    size = journal.stat().st_size

    with pytest.raises(DiskFull, match=r"holding optuna\.journal \(") as raised:
        for _ in range(100):  # the journal's last page takes a few records before the disk says no
            study.set_user_attr("note", "x" * 1000)
    assert str(disk) in str(raised.value)
    assert journal.read_bytes().endswith(b"\n") and journal.stat().st_size >= size

    filler.unlink()
    study.set_user_attr("after", 1)
    reread = optuna.load_study(study_name="j", storage=storages.open_storage(str(journal)))
    assert reread.user_attrs["after"] == 1


def test_a_trial_its_worker_never_stamped_is_failed_after_the_grace_and_retried(tmp_path, monkeypatch):
    study = optuna.create_study(study_name="s", storage=storages.open_storage(str(tmp_path / "optuna.journal")))
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    trial = study.ask(space)  # no worker stamp: the disk was full before it could be written
    unclaimed: dict[int, float] = {}
    workers.fail_stale_trials(study, unclaimed)
    assert study.trials[trial.number].state.name == "RUNNING"  # within the grace: a worker may stamp it yet

    monkeypatch.setattr(storages, "GRACE_S", 0)
    workers.fail_stale_trials(study, unclaimed)
    assert study.trials[trial.number].state.name == "FAIL"
    retry = study.ask(space)  # the next trial tries its params again
    assert retry.params == trial.params and retry.user_attrs["sweep.retry_of"] == trial.number


def test_a_promotion_the_study_could_not_note_is_not_registered_twice(tmp_path, stores):
    """The journal filled (or the sweep was killed) between registering the best model and noting it
    on the study: the next run promotes the same trial again, and finds its version."""
    prepared = lifecycle.prepare(small_space(tmp_path))
    model, holdout = jobs.refit_scored(prepared, {"learning_rate": 0.1, "max_depth": 2, "max_features": None})
    tracker = Tracker(stores["tracking_uri"])
    parent = tracker.parent_run(prepared.config, None)
    example = prepared.dataset.X_train.head(5)
    first = tracker.promote(prepared.config, parent, model, example, holdout, trial_number=3)
    again = tracker.promote(prepared.config, parent, model, example, holdout, trial_number=3)
    assert (again.version, again.alias) == (first.version, "champion")
    assert len(tracker.client.search_model_versions(f"name = '{prepared.config.model_name}'")) == 1
