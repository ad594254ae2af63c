"""Every way a supervisor stops a sweep: SIGINT or SIGTERM, to the pid or to the whole process group
(`timeout`, systemd's KillMode=control-group, Ctrl-C in a terminal), for `sweep run`, its --n-jobs
workers and `sweep worker`. Each ends within 10 s in the documented end state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_crash import SLOW_SPACE, child_runs, trials

from conftest import ROOT, small_space

EXIT_WITHIN_S = 10
SPACE = SLOW_SPACE.replace("n_trials: 6", "n_trials: 30")


def launch(tmp_path: Path, stores: dict, command: str, *extra: str) -> subprocess.Popen:
    """A real process in a session of its own, so that a signal to its group reaches only it."""
    config = small_space(tmp_path, study="crash", text=SPACE)
    where = ["--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"]]
    what = ["run", "-q", "--config", str(config)] if command == "run" else ["worker", "--study-name", "crash"]
    return subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), *what, *where, *extra], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(condition, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("the sweep did not reach the point to signal it")


def running_by(pid: int, stores: dict, fitted_s: float = 0.3) -> list:
    """The trials that the process `pid` (or one it forked) runs now, by the worker stamp host:pid:start,
    and that have fitted for `fitted_s` (a signal then comes mid-fit, not on a trial's first line)."""
    pids = {pid, *_children(pid)}
    return [t for t in trials(stores) if t.state.name == "RUNNING"
            and int(t.user_attrs.get("sweep.worker", "h:0:").split(":")[1]) in pids
            and time.time() - t.datetime_start.timestamp() >= fitted_s]


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def signal_and_time(process: subprocess.Popen, signum: int, group: bool) -> tuple[str, str, float]:
    start = time.monotonic()
    (os.killpg if group else os.kill)(process.pid, signum)
    out, err = process.communicate(timeout=120)
    return out, err, time.monotonic() - start


def assert_interrupted_state(stores: dict, err: str, signum: int) -> None:
    """No trial or child run left RUNNING, a failed trial with a FAILED run, parent KILLED, best promoted."""
    assert f"interrupted by {signal.Signals(signum).name}" in err and "Traceback" not in err, err
    final = trials(stores)
    assert "RUNNING" not in {t.state.name for t in final}
    parents, children = child_runs(stores["tracking_uri"])
    assert not [r for r in children if r.info.status == "RUNNING"]
    failed = {t.number for t in final if t.state.name == "FAIL"}
    assert failed and failed == {int(r.data.tags["sweep.trial_number"]) for r in children
                                 if r.info.status == "FAILED"}
    assert [p.info.status for p in parents] == ["KILLED"]
    champion = MlflowClient(stores["tracking_uri"]).get_model_version_by_alias("crash", "champion")
    assert int(champion.tags["sweep.trial_number"]) not in failed


@pytest.mark.parametrize(("jobs", "signum", "group"), [
    (1, signal.SIGINT, True),  # Ctrl-C in a terminal
    (1, signal.SIGTERM, True),  # timeout(1), systemd, kill -- -PGID
    (2, signal.SIGINT, True),
    (2, signal.SIGTERM, False),  # kill PID: the main process forwards it to its workers
], ids=["run-SIGINT-group", "run-SIGTERM-group", "n-jobs-SIGINT-group", "n-jobs-SIGTERM-pid"])
def test_sweep_run_ends_fast_and_clean_on_every_signal_path(tmp_path, stores, jobs, signum, group):
    process = launch(tmp_path, stores, "run", "--n-jobs", str(jobs))
    wait_for(lambda: any(t.state.name == "COMPLETE" for t in trials(stores))
             and len(running_by(process.pid, stores)) == jobs, process)
    _, err, took = signal_and_time(process, signum, group)
    assert process.returncode == 128 + signum, err
    assert took < EXIT_WITHIN_S, f"exited {took:.1f} s after the signal"
    assert_interrupted_state(stores, err, signum)


@pytest.mark.parametrize(("signum", "group"), [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM-pid", "SIGINT-group"])
def test_sweep_worker_ends_fast_and_clean_and_the_sweep_goes_on(tmp_path, stores, signum, group):
    sweep_run = launch(tmp_path, stores, "run")
    wait_for(lambda: any(t.state.name == "COMPLETE" for t in trials(stores)), sweep_run)
    worker = launch(tmp_path, stores, "worker")
    wait_for(lambda: running_by(worker.pid, stores), worker)
    victim = running_by(worker.pid, stores)[0].number
    try:
        _, err, took = signal_and_time(worker, signum, group)
        assert worker.returncode == 128 + signum, err
        assert took < EXIT_WITHIN_S, f"exited {took:.1f} s after the signal"
        assert f"worker: interrupted by {signal.Signals(signum).name}" in err and "Traceback" not in err
        assert trials(stores)[victim].state.name == "FAIL"
        _, children = child_runs(stores["tracking_uri"])  # the worker flushed its runs before it exited
        assert [r.info.status for r in children if r.data.tags["sweep.trial_number"] == str(victim)] == ["FAILED"]
        assert sweep_run.poll() is None, "the sweep goes on without the worker"
    finally:
        os.killpg(sweep_run.pid, signal.SIGTERM)
        _, err = sweep_run.communicate(timeout=120)
    assert sweep_run.returncode == 143, err
    assert_interrupted_state(stores, err, signal.SIGTERM)
