"""Measuring tools for bench.py: the space files, timed child processes, study timelines, an mlflow server.

Only the standard library, PyYAML and Optuna are imported here: the bench's own process stays
light, and all the work it times happens in child processes.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: python, sweep, mlflow
SERVER_START_S = 180  # `mlflow server` takes 10-50 s to answer on this kind of machine
MULTICLASS = {"iris", "wine", "digits"}
REGRESSION = {"diabetes", "make_regression"}


# ---------------------------------------------------------------- the search-space files

def write_space(path: Path, *, dataset: str, rows: int, n_trials: int, trees: int, study: str,
                pruner: str = "none", fixed: dict | None = None, params: dict | None = None,
                cv: int | None = None, metric: str | None = None, estimator: str | None = None) -> Path:
    """The repo's default space with the bench's data, budget and trees: every variant reads this file.

    `trees` sets the ensemble's size: n_estimators, or max_iter for a HistGradientBoosting estimator
    (whose `params` must then be given: the default space's are GradientBoosting's)."""
    space = yaml.safe_load((ROOT / "search_space.yaml").read_text())
    space["data"] = {"dataset": dataset, "holdout": space["data"].get("holdout", 0.2)}
    if dataset.startswith("make_"):
        space["data"]["options"] = {"n_samples": rows, "n_features": 20}
    if dataset in REGRESSION:
        space["estimator"], space["metric"] = "GradientBoostingRegressor", "r2"
    elif dataset in MULTICLASS:
        space["metric"] = "roc_auc_ovr"  # roc_auc scores binary targets only
    space["estimator"] = estimator or space["estimator"]
    space["metric"] = metric or space["metric"]
    space["cv"] = cv or space["cv"]
    space.update(study_name=study, experiment=study, n_trials=n_trials, pruner=pruner)
    size = "max_iter" if space["estimator"].startswith("Hist") else "n_estimators"
    base = {k: v for k, v in space.get("fixed", {}).items() if k != "n_estimators"}
    space["fixed"] = {**base, size: trees, **(fixed or {})}
    if params is not None:
        space["params"] = params
    for name in space["fixed"]:  # a param moved to `fixed` is no longer searched
        space["params"].pop(name, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


# ---------------------------------------------------------------- timed child processes

@dataclass(frozen=True)
class Timed:
    """One child process, timed from the parent: what a user waits for."""

    launched: float  # epoch seconds at launch: trial times are told relative to it
    wall_s: float
    cpu_s: float  # user + system of the child and the children it waited for (its --n-jobs workers)
    returncode: int
    stdout: str
    lines: list[tuple[float, str]]  # stderr lines with the epoch time they arrived
    rss: list[tuple[float, float]]  # (epoch time, the child's peak RSS so far in MB: VmHWM), 5 a second

    @property
    def peak_rss_mb(self) -> float:
        return max((mb for _, mb in self.rss), default=0.0)

    def peak_rss_at(self, moment: float) -> float:
        """The child's peak RSS as read last before `moment` (epoch seconds)."""
        return max((mb for t, mb in self.rss if t <= moment), default=0.0)

    def seconds_at(self, prefix: str) -> float | None:
        """When the first stderr line starting with `prefix` arrived, after launch."""
        return next((t - self.launched for t, line in self.lines if line.startswith(prefix)), None)


def run_timed(command: list[str], cwd: Path, timeout_s: float = 7200) -> Timed:
    """Run a child to its end, reading stderr as it comes so each line gets the time it was said."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "SWEEP_STORAGE", "SWEEP_N_JOBS")}
    before = _children_cpu()
    launched, started = time.time(), time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.time(), line.rstrip("\n"))
                                                          for line in process.stderr))
    reader.start()
    rss: list[tuple[float, float]] = []
    watcher = threading.Thread(target=_watch_peak_rss, args=(process, rss), daemon=True)
    watcher.start()
    stdout = process.stdout.read()
    try:
        process.wait(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join()
    wall = time.perf_counter() - started
    return Timed(launched, wall, _children_cpu() - before, process.returncode, stdout, lines, rss)


def _watch_peak_rss(process: subprocess.Popen, samples: list[tuple[float, float]]) -> None:
    """Read the child's VmHWM (its peak RSS so far) five times a second until it ends."""
    status = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        try:
            text = status.read_text()
        except OSError:
            return
        samples.extend((time.time(), int(line.split()[1]) / 1024) for line in text.splitlines()
                       if line.startswith("VmHWM"))
        time.sleep(0.2)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def checked(timed: Timed, what: str) -> Timed:
    """Stop the bench, with the child's last words, when a variant failed: its figures mean nothing."""
    if timed.returncode != 0:
        tail = "\n".join(line for _, line in timed.lines[-25:])
        raise SystemExit(f"bench: {what} exited with {timed.returncode}:\n{tail}")
    return timed


def median_wall(command: list[str], cwd: Path, repeats: int) -> float:
    """The median wall time of a short command: one run is too noisy on a shared machine."""
    return statistics.median(checked(run_timed(command, cwd), " ".join(command)).wall_s
                             for _ in range(repeats))


def load_avg() -> float:
    """The 1-minute load average: above the core count, other jobs shared the machine with the bench."""
    return float(Path("/proc/loadavg").read_text().split()[0])


# ---------------------------------------------------------------- study timelines

@dataclass(frozen=True)
class TrialTime:
    number: int
    state: str
    start: float  # epoch seconds
    end: float | None
    value: float | None
    fit_s: float | None  # user attr sweep.fit_time_s (our sweep only)
    params: dict
    worker: str = ""  # user attr sweep.worker (our sweep only): which process ran it


def study_trials(storage: str, study_name: str) -> list[TrialTime]:
    """A finished study's trials, read from its storage (a journal file or an RDB URL)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    opened = storage if "://" in storage else JournalStorage(JournalFileBackend(storage))
    study = optuna.load_study(study_name=study_name, storage=opened)
    return [TrialTime(t.number, t.state.name, t.datetime_start.timestamp(),
                      t.datetime_complete.timestamp() if t.datetime_complete else None,
                      t.value, t.user_attrs.get("sweep.fit_time_s"), dict(t.params),
                      t.user_attrs.get("sweep.worker", ""))
            for t in study.get_trials(deepcopy=False) if t.datetime_start is not None]


def counted(trials: list[TrialTime]) -> list[TrialTime]:
    """The trials --n-trials counts: completed and pruned (failed and surplus ones are not)."""
    return [t for t in trials if t.state in ("COMPLETE", "PRUNED")]


def loop_window(trials: list[TrialTime]) -> tuple[float, float]:
    """(first trial's start, last trial's end): the trial loop without start-up and finalize."""
    return min(t.start for t in trials), max(t.end for t in trials if t.end is not None)


def first_reaching(trials: list[TrialTime], target: float, launched: float) -> float | None:
    """Seconds after launch when a completed trial first scored at least `target` (None: never)."""
    ends = [t.end for t in trials if t.state == "COMPLETE" and t.value is not None and t.value >= target]
    return min(ends) - launched if ends else None


def best_value(trials: list[TrialTime]) -> float:
    return max(t.value for t in trials if t.state == "COMPLETE")


def median_or_none(values: list[float | None]) -> float | None:
    """The median of times where None means never: never counts as later than any time."""
    middle = statistics.median(math.inf if v is None else v for v in values)
    return None if math.isinf(middle) else middle


# ---------------------------------------------------------------- a local mlflow server

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """A local `mlflow server` (sqlite backend, served artifacts, one worker) for the time of the block.

    It runs in a session of its own, so the finally can end it and its uvicorn worker by its
    process group, and nothing is left running whatever happens in the block.
    """
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    with open(root / "server.log", "w") as log:
        process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root}/server.db",
             "--artifacts-destination", str(root / "art")],
            cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_TRACKING_URI": ""},
        )
        try:
            _wait_healthy(url, process)
            yield url
        finally:
            _stop_group(process)


def _wait_healthy(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"bench: mlflow server at {url} did not answer within {SERVER_START_S} s")


def _stop_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- the machine

def machine() -> str:
    """nproc, the CPU model and the memory: the facts a figure needs beside it."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    memory = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), "0")
    return (f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {cpu},"
            f" {int(memory) / 2**20:.0f} GiB; Python {sys.version.split()[0]}")
