"""A trial's child run: the record built from the Optuna trial alone, and its idempotent write.

Because a child run is a pure function of its trial, the live recorder (recorder.py), the repair
at the end of a sweep and `sweep sync` all write through the same `write_record`, and writing
twice changes nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gbsweep import keys, studies

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from optuna import Study
    from optuna.trial import FrozenTrial

    from gbsweep.search_space import SweepConfig

RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
MAX_TAG_LENGTH = 5000
# a trial's own numbers, logged as child-run metrics (axes of the parallel-coordinates plot)
TRIAL_METRICS = (("fit_time_s", keys.FIT_TIME_S), ("trees", keys.TREES), ("predict_ms", keys.PREDICT_MS),
                 ("model_bytes", keys.MODEL_BYTES))
FEASIBLE = "feasible"  # a metric: 1 when the trial kept within every constraint, else 0
RETRIES = 4  # attempts per write, 0.5 s, 2 s and 8 s apart


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
    ones as a placeholder; the metric's curve and CV mean; whether it kept within the constraints
    (`feasible`, 1 or 0: an axis of the parallel-coordinates view, which colours the lines by
    the metric chosen last); never a NaN."""
    state = trial.state.name
    attrs = trial.user_attrs
    metric = config.metric
    metrics = [(metric, v, int(step)) for step, v in sorted(trial.intermediate_values.items())
               if _finite(v)]
    score = studies.score(trial)
    if state == "COMPLETE" and score is not None and _finite(score):
        if not metrics or metrics[-1][1] != score:
            metrics.append((metric, score, metrics[-1][2] if metrics else 0))
        metrics += [(f"{metric}_std", attrs[keys.SCORE_STD], 0)] if keys.SCORE_STD in attrs else []
    metrics += [(name, attrs[key], 0) for name, key in TRIAL_METRICS if _finite(attrs.get(key))]
    if trial.constraints:
        metrics.append((FEASIBLE, float(studies.feasible(trial)), 0))
    tags = run_tags(trial.number, state, study_name, parent_run_id)
    tags |= {key: str(attrs[key]) for key in (keys.WORKER, keys.FROM_STUDY, keys.FROM_TRIAL) if key in attrs}
    error = attrs.get(keys.ERROR)
    if error and state == "FAIL":
        tags[keys.ERROR] = error[:MAX_TAG_LENGTH]
    params = {p.name: keys.param_value(trial.params.get(p.name, keys.INACTIVE)) for p in config.params}
    end = trial.datetime_complete
    return TrialRecord(
        number=trial.number, status=RUN_STATUS.get(state, "RUNNING"), params=params,
        metrics=metrics, tags=tags, start_ms=ms(trial.datetime_start),
        end_ms=ms(end) if end else None,
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
        if record.status != "RUNNING":  # a repair, or a late write: the trial's worker may have made one too
            run = one_run(client, experiment_id, record.tags[keys.PARENT_RUN_TAG], record.number) or run
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


def one_run(client: MlflowClient, experiment_id: str, parent_run_id: str, number: int) -> RunState | None:
    """The trial's one child run, where two processes each created one: a worker whose tracking
    server was out of reach while its trial ran (a host cut off from it), and the repair at the
    end of the sweep or `sweep sync`, which found no run for the finished trial. Whoever looks
    after creating keeps the same run (the smallest run id) and deletes the others, so the two
    agree without talking to each other."""
    query = f"tags.`{keys.PARENT_RUN_TAG}` = '{parent_run_id}' and tags.`{keys.TRIAL_NUMBER}` = '{number}'"
    runs = sorted(client.search_runs([experiment_id], query, max_results=100), key=lambda r: r.info.run_id)
    for twin in runs[1:]:
        client.delete_run(twin.info.run_id)
    return RunState.of(runs[0]) if runs else None


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


def tag_front(client: MlflowClient, study: Study, parent_run_id: str) -> list[int]:
    """Tag the child runs of a two-objective study's Pareto front `sweep.pareto: true`, and set it
    to false on a run that left the front since; return the front's trial numbers. The front
    is known from the whole study only, so this runs when the sweep ends and on `sweep sync`."""
    front = {t.number for t in studies.pareto_front(study)}
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    for number, run in runs_by_trial(client, experiment_id, parent_run_id).items():
        value = str(number in front).lower()
        if (number in front or keys.PARETO in run.data.tags) and run.data.tags.get(keys.PARETO) != value:
            client.set_tag(run.info.run_id, keys.PARETO, value)
    return sorted(front)


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


def with_retries(action: Callable[[], Any], attempts: int = RETRIES, first_wait_s: float = 0.5,
                 failed_once: Callable[[], None] | None = None) -> Any:
    """The action's result, tried `attempts` times; `failed_once` is called when the first try fails."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception:
            if attempt == 0 and failed_once is not None:
                failed_once()
            if attempt == attempts - 1:
                raise
            time.sleep(first_wait_s * 4 ** attempt)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def ms(moment: Any) -> int:
    return int(moment.timestamp() * 1000) if moment else int(time.time() * 1000)
