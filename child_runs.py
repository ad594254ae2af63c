"""A trial's child run: the record built from the Optuna trial alone, its idempotent write, and the
logger process that writes it off the trials' path.

Because a child run is a pure function of its trial, the live logger, the repair at the end of a
sweep and `sweep sync` all write through the same `write_record`, and writing twice changes nothing.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import keys
import studies

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from optuna import Study, Trial
    from optuna.trial import FrozenTrial

    from search_space import SweepConfig

RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
MAX_TAG_LENGTH = 5000
FLUSH_TIMEOUT_S = 120  # how long the end of a sweep waits for queued MLflow writes
RETRIES = 4  # attempts per record, 0.5 s, 2 s and 8 s apart
STORE_DOWN_PAUSE_S = 30  # then records are kept for the repair, unsent, for this long


@dataclass(frozen=True)
class TrialRecord:
    """What one child run says of one trial, built from the Optuna trial alone (so sync can rebuild it)."""

    number: int
    status: str  # the MLflow run status
    params: dict[str, str]
    metrics: list[tuple[str, float, int]]  # (key, value, step)
    tags: dict[str, str]
    start_ms: int
    end_ms: int | None


def trial_record(trial: FrozenTrial, config: SweepConfig, study_name: str, parent_run_id: str) -> TrialRecord:
    """The child run of a finished (or running) FrozenTrial: exactly the declared params, inactive
    ones as a placeholder; the metric's curve and CV mean; never a NaN."""
    state = trial.state.name
    attrs = trial.user_attrs
    metric = config.metric
    metrics = [(metric, v, int(step)) for step, v in sorted(trial.intermediate_values.items())
               if _finite(v)]
    if state == "COMPLETE" and trial.value is not None and _finite(trial.value):
        if not metrics or metrics[-1][1] != trial.value:
            metrics.append((metric, trial.value, metrics[-1][2] if metrics else 0))
        metrics += [(f"{metric}_std", attrs[keys.SCORE_STD], 0)] if keys.SCORE_STD in attrs else []
    if _finite(attrs.get(keys.FIT_TIME_S)):
        metrics.append(("fit_time_s", attrs[keys.FIT_TIME_S], 0))
    tags = run_tags(trial.number, state, study_name, parent_run_id)
    error = attrs.get(keys.ERROR)
    if error and state == "FAIL":
        tags[keys.ERROR] = error[:MAX_TAG_LENGTH]
    params = {p.name: keys.param_value(trial.params.get(p.name, keys.INACTIVE)) for p in config.params}
    end = trial.datetime_complete
    return TrialRecord(
        number=trial.number, status=RUN_STATUS.get(state, "RUNNING"), params=params,
        metrics=metrics, tags=tags, start_ms=_ms(trial.datetime_start),
        end_ms=_ms(end) if end else None,
    )


def run_tags(number: int, state: str, study_name: str, parent_run_id: str) -> dict[str, str]:
    return {keys.PARENT_RUN_TAG: parent_run_id, keys.STUDY_NAME: study_name,
            keys.TRIAL_NUMBER: str(number), keys.TRIAL_STATE: state}


@dataclass(frozen=True)
class RunState:
    """What a child run already holds."""

    run_id: str
    params: dict
    metrics: frozenset
    tags: dict
    status: str

    @classmethod
    def of(cls, run: Run) -> RunState:
        return cls(run.info.run_id, dict(run.data.params), frozenset(run.data.metrics),
                   dict(run.data.tags), run.info.status)


def write_record(client: MlflowClient, experiment_id: str, record: TrialRecord,
                 run: RunState | None = None) -> tuple[str, bool]:
    """Make the child run say what the record says, writing only what it lacks (so it is idempotent).

    `run` is what the run holds already (None: create it). Three requests at most: create, one
    batch, terminate. Returns the run id and whether anything was written.
    """
    from mlflow.entities import Metric, Param, RunTag

    wrote = run is None
    if run is None:
        created = client.create_run(experiment_id, start_time=record.start_ms,
                                    run_name=f"trial-{record.number}", tags=record.tags)
        run = RunState(created.info.run_id, {}, frozenset(), dict(record.tags), "RUNNING")
    params = [Param(k, v) for k, v in record.params.items() if k not in run.params]
    metrics = [Metric(k, v, record.end_ms or record.start_ms, step)
               for k, v, step in record.metrics if k not in run.metrics]
    tags = [RunTag(k, v) for k, v in record.tags.items() if run.tags.get(k) != v]
    if params or metrics or tags:
        client.log_batch(run.run_id, metrics=metrics, params=params, tags=tags)
        wrote = True
    if record.status not in (run.status, "RUNNING"):
        client.set_terminated(run.run_id, status=record.status, end_time=record.end_ms)
        wrote = True
    return run.run_id, wrote


def sync(client: MlflowClient, study: Study, config: SweepConfig, parent_run_id: str) -> int:
    """Make every finished trial's child run match the Optuna storage; return how many changed.

    It writes only what a run lacks: a run left RUNNING by a dead or interrupted worker, a run
    a tracking outage missed. One search per 1000 runs when nothing is missing.
    """
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs = runs_by_trial(client, experiment_id, parent_run_id)
    changed = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state.name == "RUNNING" or studies.is_surplus(trial):
            continue
        run = runs.get(trial.number)
        record = trial_record(trial, config, study.study_name, parent_run_id)
        changed += write_record(client, experiment_id, record, RunState.of(run) if run else None)[1]
    return changed


def runs_by_trial(client: MlflowClient, experiment_id: str, parent_run_id: str) -> dict[int, Run]:
    """The parent's child runs by trial number."""
    query = f"tags.{keys.PARENT_RUN_TAG} = '{parent_run_id}'"
    runs, token = {}, None
    while True:
        page = client.search_runs([experiment_id], query, max_results=1000, page_token=token)
        for run in page:
            number = run.data.tags.get(keys.TRIAL_NUMBER, "")
            if number.isdigit():
                runs[int(number)] = run
        token = page.token
        if not token:
            return runs


class TrialRecorder:
    """Writes child runs from a separate logger process, so MLflow never sits on a trial's path.

    A process, not a thread: MLflow's client spends tens of ms of Python per request (SQLAlchemy),
    which a thread would take from the fitting through the GIL. A trial's run is opened (RUNNING)
    when the trial starts and completed, in one batch, when it ends; a failing store is retried
    with backoff, and what still fails is reported for `sweep sync`.
    """

    def __init__(self, tracking_uri: str) -> None:
        """Fork the logger; do it before this process opens the store, so no connection is shared."""
        import multiprocessing

        context = multiprocessing.get_context("fork")  # starts at once, with mlflow imported
        self._requests, self._replies = context.Queue(), context.Queue()
        self._process = context.Process(target=_log_runs, name="sweep-mlflow-logger", daemon=True,
                                        args=(tracking_uri, self._requests, self._replies))
        self._process.start()
        self.experiment_id, self.parent_run_id = "", ""
        self.config: SweepConfig | None = None
        self._open: set[int] = set()
        self._run_ids: dict[int, str] = {}

    def warm_up(self) -> None:
        """Have the logger open the store now (it takes a second), not on trial 0's record."""
        self._requests.put(("0", None))

    def bind(self, experiment_id: str, parent_run_id: str, config: SweepConfig) -> TrialRecorder:
        """Say which sweep the trials belong to."""
        self.experiment_id, self.parent_run_id, self.config = experiment_id, parent_run_id, config
        return self

    def open_trial(self, trial: Trial) -> None:
        """Queue the creation of the trial's RUNNING child run."""
        assert self.config is not None, "bind() the recorder to its sweep first"
        tags = run_tags(trial.number, "RUNNING", self.config.study_name, self.parent_run_id)
        record = TrialRecord(trial.number, "RUNNING", {}, [], tags, _ms(trial.datetime_start), None)
        self._requests.put((self.experiment_id, record))
        self._open.add(trial.number)

    def run_id(self, number: int, wait_s: float) -> str | None:
        """The child run id of an opened trial, once the logger has created it (None after wait_s)."""
        import queue

        deadline = time.monotonic() + wait_s
        while number not in self._run_ids:
            try:
                kind, *reply = self._replies.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if kind == "run":
                self._run_ids[reply[0]] = reply[1]
        return self._run_ids.pop(number)

    def close_trial(self, trial: FrozenTrial) -> None:
        """Queue the finished trial's params, metrics and status (an Optuna callback calls this).

        A trial that opened no run (a surplus one, refused a slot) gets none.
        """
        if trial.number not in self._open or self.config is None:
            return
        record = trial_record(trial, self.config, self.config.study_name, self.parent_run_id)
        self._requests.put((self.experiment_id, record))
        self._open.discard(trial.number)

    def close_unfinished(self, study: Study) -> None:
        """Close the runs of trials that ended without Optuna's callbacks (an interrupt)."""
        trials = study.get_trials(deepcopy=False)
        for number in sorted(self._open):
            self.close_trial(trials[number])

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> list[int]:
        """Wait for the queued writes; return the numbers of the trials that could not be logged."""
        import queue

        self._requests.put(None)
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, *reply = self._replies.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:  # the logger is stuck on a store that does not answer
                self._process.kill()
                return [-1]
            if kind == "unlogged":
                self._process.join()
                return list(reply[0])


def _log_runs(tracking_uri: str, requests: Any, replies: Any) -> None:
    """The logger process: write each queued record, in order, until the None at the end."""
    import signal

    from mlflow import MlflowClient

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the sweep's to handle: it flushes us
    client = None  # made on the first record: by then the sweep has created the store's tables
    opened: dict[int, RunState] = {}
    unlogged: set[int] = set()
    down_until = 0.0  # after a record failed all its retries, skip the store until then
    while (item := _next_request(requests)) is not None:
        experiment_id, record = item
        client = client or MlflowClient(tracking_uri)
        if record is None:  # warm-up: open the store while the sweep opens its study
            client.search_experiments(max_results=1)
            continue
        try:
            run = opened.pop(record.number, None)
            if time.monotonic() < down_until:
                raise ConnectionError("the tracking store is down")
            run_id, _ = _with_retries(functools.partial(write_record, client, experiment_id, record, run))
        except Exception:  # the store stayed unusable: the trial waits for a repair or `sweep sync`
            unlogged.add(record.number)
            down_until = max(down_until, time.monotonic() + STORE_DOWN_PAUSE_S)
            continue
        unlogged.discard(record.number)
        if record.status == "RUNNING":
            opened[record.number] = RunState(run_id, {}, frozenset(), dict(record.tags), "RUNNING")
            replies.put(("run", record.number, run_id))
    replies.put(("unlogged", sorted(unlogged)))


def _next_request(requests: Any) -> Any:
    """The next queued request; None when the sweep ends, or when it died (kill -9) and left us."""
    import queue

    parent = os.getppid()
    while True:
        try:
            return requests.get(timeout=1)
        except queue.Empty:
            if os.getppid() != parent:
                return None


def _with_retries(action: Callable[[], Any], attempts: int = RETRIES, first_wait_s: float = 0.5) -> Any:
    for attempt in range(attempts):
        try:
            return action()
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(first_wait_s * 4 ** attempt)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _ms(moment: Any) -> int:
    return int(moment.timestamp() * 1000) if moment else int(time.time() * 1000)
