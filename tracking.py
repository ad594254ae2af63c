"""Everything MLflow: the parent run, one child run per trial, the sweep's artifacts, promotion.

All calls go through MlflowClient with explicit run ids; the fluent API is used once, to log the
promoted model, because MLflow only links a logged model to a run through it.
"""

from __future__ import annotations

import math
import os
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from search_space import ConfigError, SweepConfig

RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
MAX_TAG_LENGTH = 5000
HEALTH_TIMEOUT_S = 5
FLUSH_TIMEOUT_S = 120  # how long the end of a sweep waits for queued MLflow writes


def mask_uri(uri: str) -> str:
    """The URI with any password replaced by ***, fit for messages and logs."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Promotion:
    version: str
    alias: str  # "champion" or "challenger"
    holdout_score: float
    previous_champion: str | None


class Tracker:
    """The sweep's view in one MLflow tracking store."""

    def __init__(self, tracking_uri: str, record_trials: bool = False) -> None:
        """`record_trials` forks the child-run logger first, before the client opens the store."""
        from mlflow import MlflowClient

        # stdout is for data; against a server MLflow would print run links there, at the cost of
        # one more request per finished run.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        # MLflow retries a lost server for minutes per request by default; the recorder retries
        # on its own, off the trials' path, so each request gives up sooner.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        self.uri = tracking_uri
        self._recorder = TrialRecorder(tracking_uri) if record_trials else None
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def check_reachable(self) -> None:
        """Fail before the study starts when the store cannot be used."""
        if self.uri.startswith(("http://", "https://")):
            self._check_health()
        try:
            self.client.search_experiments(max_results=1)
        except Exception as error:  # MLflow wraps network and database errors in many types
            first = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
            raise ConfigError([f"tracking URI {mask_uri(self.uri)}: cannot be used: {first}"]) from None
        if self._recorder is not None:
            self._recorder.warm_up()

    def _check_health(self) -> None:
        """One quick probe: MLflow's own client would retry an absent server for minutes."""
        import urllib.request

        parts = urllib.parse.urlsplit(self.uri)
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")  # credentials stay out
        url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
        try:
            with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as response:
                response.read()
        except (OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or error
            raise ConfigError([f"tracking URI {mask_uri(self.uri)}: cannot be used: no answer from"
                               f" the server ({reason})."]) from None

    def experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            return self.client.create_experiment(name)
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def parent_run(self, config: SweepConfig, known_run_id: str | None, resume: bool = True) -> str:
        """The study's parent run: the known one when this store has it, else a new one.

        `resume` marks it RUNNING again, for the trials about to run.
        """
        if known_run_id and self._run_exists(known_run_id):
            if resume:
                self.client.update_run(known_run_id, status="RUNNING")
                self.client.set_tag(known_run_id, "sweep.n_trials", str(config.n_trials))
            return known_run_id
        from mlflow.entities import Param, RunTag

        experiment_id = self.experiment_id(config.experiment)
        run = self.client.create_run(experiment_id, run_name=config.study_name, tags={
            "sweep.study_name": config.study_name,
            "sweep.space_sha256": config.space_sha256(),
            "sweep.n_trials": str(config.n_trials),
        })
        params = [Param(k, _param_value(v)) for k, v in config.settings().items()]
        self.client.log_batch(run.info.run_id, params=params, tags=[RunTag("mlflow.note.content", _note(config))])
        self.client.log_text(run.info.run_id, config.source, "search_space.yaml")
        return run.info.run_id

    def _run_exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    def recorder(self, parent_run_id: str, config: SweepConfig) -> TrialRecorder:
        experiment_id = self.client.get_run(parent_run_id).info.experiment_id
        return self._recorder.bind(experiment_id, parent_run_id, config)

    def log_results(self, parent_run_id: str, metric: str, best: dict, trials: Any) -> None:
        """Best params (YAML and JSON), the trials table and the best-so-far curve on the parent."""
        import yaml
        from mlflow.entities import Metric

        self.client.log_dict(parent_run_id, best, "best_params.json")
        self.client.log_text(parent_run_id, yaml.safe_dump(best, sort_keys=False), "best_params.yaml")
        self.client.log_text(parent_run_id, trials.to_csv(index=False), "trials.csv")
        now = int(time.time() * 1000)
        key = f"best_{metric}"
        logged = {m.step for m in self.client.get_metric_history(parent_run_id, key)}
        history = [Metric(key, value, now, step) for step, value in _best_so_far(trials) if step not in logged]
        for start in range(0, len(history), 1000):  # MLflow takes at most 1000 metrics a batch
            self.client.log_batch(parent_run_id, metrics=history[start:start + 1000])

    def sync_trials(self, study: Any, config: SweepConfig, parent_run_id: str) -> int:
        """Make every finished trial's child run match the Optuna storage; return how many changed.

        It writes only what a run lacks: a run left RUNNING by a dead or interrupted worker, a run
        a tracking outage missed. One search per 1000 runs when nothing is missing.
        """
        experiment_id = self.client.get_run(parent_run_id).info.experiment_id
        runs = self.child_runs(experiment_id, parent_run_id)
        changed = 0
        for trial in study.get_trials(deepcopy=False):
            run = runs.get(trial.number)
            if trial.state.name == "RUNNING" or trial.user_attrs.get("sweep.surplus"):
                continue
            record = trial_record(trial, config, study.study_name, parent_run_id)
            changed += write_record(self.client, experiment_id, record, RunState.of(run) if run else None)[1]
        return changed

    def child_runs(self, experiment_id: str, parent_run_id: str) -> dict[int, Any]:
        """The parent's child runs by trial number."""
        query = f"tags.mlflow.parentRunId = '{parent_run_id}'"
        runs, token = {}, None
        while True:
            page = self.client.search_runs([experiment_id], query, max_results=1000, page_token=token)
            for run in page:
                number = run.data.tags.get("sweep.trial_number", "")
                if number.isdigit():
                    runs[int(number)] = run
            token = page.token
            if not token:
                return runs

    def finish_parent(self, parent_run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(parent_run_id, status=status)

    def promote(self, config: SweepConfig, parent_run_id: str, model: Any, X_example: Any,
                holdout_score: float, trial_number: int) -> Promotion:
        """Log the model on the parent run, register it and point an alias at the new version."""
        name = config.model_name
        champion = self._champion(name)
        tags = {"sweep.study_name": config.study_name, "sweep.trial_number": str(trial_number),
                "sweep.metric": config.metric, "sweep.holdout_score": repr(holdout_score)}
        version = self._log_and_register(config, parent_run_id, model, X_example, tags)
        beats = champion is None or (
            champion.tags.get("sweep.metric") == config.metric
            and holdout_score > float(champion.tags.get("sweep.holdout_score", "-inf"))
        )
        alias = "champion" if beats else "challenger"
        self.client.set_registered_model_alias(name, alias, version)
        self.client.log_metric(parent_run_id, f"holdout_{config.metric}", holdout_score)
        return Promotion(version, alias, holdout_score, champion.version if champion else None)

    def _champion(self, name: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, "champion")
        except MlflowException:
            return None

    def _log_and_register(self, config: SweepConfig, parent_run_id: str, model: Any, X_example: Any,
                          tags: dict) -> str:
        import mlflow
        import mlflow.sklearn
        from mlflow.exceptions import MlflowException
        from mlflow.models import infer_signature

        mlflow.set_tracking_uri(self.uri)
        signature = infer_signature(X_example, model.predict(X_example))
        with mlflow.start_run(run_id=parent_run_id):
            info = mlflow.sklearn.log_model(
                model, name="model", signature=signature, input_example=X_example,
                pip_requirements=pip_requirements(),
                serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
                skops_trusted_types=trusted_types(model),
            )
        try:
            self.client.create_registered_model(config.model_name)
        except MlflowException as error:
            if "ALREADY_EXISTS" not in str(error.error_code):
                raise
        version = self.client.create_model_version(
            config.model_name, source=info.model_uri, run_id=parent_run_id, tags=tags,
            model_id=info.model_id,
        )
        return str(version.version)


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


def trial_record(trial: Any, config: SweepConfig, study_name: str, parent_run_id: str,
                 error: str | None = None) -> TrialRecord:
    """The child run of a finished (or running) FrozenTrial: exactly the declared params, inactive
    ones as a placeholder; the metric's curve and CV mean; never a NaN."""
    from objective import INACTIVE

    state = trial.state.name
    attrs = trial.user_attrs
    metric = config.metric
    metrics = [(metric, v, int(step)) for step, v in sorted(trial.intermediate_values.items())
               if _finite(v)]
    if state == "COMPLETE" and _finite(trial.value):
        if not metrics or metrics[-1][1] != trial.value:
            metrics.append((metric, trial.value, metrics[-1][2] if metrics else 0))
        metrics += [(f"{metric}_std", attrs["sweep.score_std"], 0)] if "sweep.score_std" in attrs else []
    if _finite(attrs.get("sweep.fit_time_s")):
        metrics.append(("fit_time_s", attrs["sweep.fit_time_s"], 0))
    tags = _run_tags(trial.number, state, study_name, parent_run_id)
    error = error or attrs.get("sweep.error")
    if error and state == "FAIL":
        tags["sweep.error"] = error[:MAX_TAG_LENGTH]
    params = {p.name: _param_value(trial.params.get(p.name, INACTIVE)) for p in config.params}
    end = trial.datetime_complete
    return TrialRecord(
        number=trial.number, status=RUN_STATUS.get(state, "RUNNING"), params=params,
        metrics=metrics, tags=tags, start_ms=_ms(trial.datetime_start),
        end_ms=_ms(end) if end else None,
    )


@dataclass(frozen=True)
class RunState:
    """What a child run already holds."""

    run_id: str
    params: dict
    metrics: frozenset
    tags: dict
    status: str

    @classmethod
    def of(cls, run: Any) -> RunState:
        return cls(run.info.run_id, dict(run.data.params), frozenset(run.data.metrics),
                   dict(run.data.tags), run.info.status)


def _run_tags(number: int, state: str, study_name: str, parent_run_id: str) -> dict[str, str]:
    return {"mlflow.parentRunId": parent_run_id, "sweep.study_name": study_name,
            "sweep.trial_number": str(number), "sweep.trial_state": state}


def write_record(client: Any, experiment_id: str, record: TrialRecord,
                 run: RunState | None = None) -> tuple[str, bool]:
    """Make the child run say what the record says, writing only what it lacks (so it is idempotent).

    `run` is what the run holds already (None: create it). Three requests at most: create, one
    batch, terminate. Returns the run id and whether anything was written.
    """
    wrote = run is None
    from mlflow.entities import Metric, Param, RunTag

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
        self.experiment_id, self.parent_run_id, self.config = "", "", None
        self._open: set[int] = set()
        self._run_ids: dict[int, str] = {}

    def bind(self, experiment_id: str, parent_run_id: str, config: SweepConfig) -> TrialRecorder:
        """Say which sweep the trials belong to; the logger opens the store now, before trial 0."""
        self.experiment_id, self.parent_run_id, self.config = experiment_id, parent_run_id, config
        return self

    def warm_up(self, experiment_id: str = "0") -> None:
        """Have the logger open the store now (it takes a second), not on trial 0's record."""
        self._requests.put((experiment_id, None))

    def open_trial(self, trial: Any) -> None:
        """Queue the creation of the trial's RUNNING child run."""
        tags = _run_tags(trial.number, "RUNNING", self.config.study_name, self.parent_run_id)
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
            self._run_ids.update([reply] if kind == "run" else [])
        return self._run_ids.pop(number)

    def close_trial(self, trial: Any, error: str | None = None) -> None:
        """Queue the finished trial's params, metrics and status (an Optuna callback calls this).

        A trial that opened no run (a surplus one, refused a slot) gets none.
        """
        if trial.number not in self._open:
            return
        record = trial_record(trial, self.config, self.config.study_name, self.parent_run_id, error)
        self._requests.put((self.experiment_id, record))
        self._open.discard(trial.number)

    def close_unfinished(self, study: Any) -> None:
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
                return reply[0]


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
            run_id, _ = _with_retries(lambda: write_record(client, experiment_id, record, run))
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


RETRIES = 4  # attempts per record, 0.5 s, 2 s and 8 s apart
STORE_DOWN_PAUSE_S = 30  # then records are kept for the repair, unsent, for this long


def _with_retries(action: Any, attempts: int = RETRIES, first_wait_s: float = 0.5) -> Any:
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


def _param_value(value: Any) -> str:
    return "None" if value is None else str(value)


def _note(config: SweepConfig) -> str:
    return (f"Sweep `{config.study_name}`: {config.estimator} on {config.data.label}, "
            f"{config.metric} over {config.cv} folds. Each child run is one Optuna trial.")


def _best_so_far(trials: Any) -> list[tuple[int, float]]:
    best, history = None, []
    for row in trials.itertuples():
        if row.state == "COMPLETE" and (best is None or row.value > best):
            best = row.value
            history.append((int(row.number), float(best)))
    return history


def trusted_types(model: Any) -> list[str]:
    """Exactly the types skops must be told to trust to load this model, nothing wider."""
    import skops.io

    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in
            ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")]

