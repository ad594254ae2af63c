"""What `sweep run` asks of its recorder process, which has MLflow imported and the store open:
the parent run (created or resumed, linked both ways), the best trial refitted ahead in a thread,
and finalize, once (repair the child runs, log the results, promote), then the parent's end.

A validated sweep (`Prepared`) lives here too: the jobs and lifecycle.py both take it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gbsweep import child_runs, dataset, keys, reports, studies, tracking
from gbsweep.errors import DiskFull, SweepFailed, disk_full, first_line, say
from gbsweep.objective import build_model, scorer_for
from gbsweep.recorder import Agent, Job
from gbsweep.search_space import MEASURED, SweepConfig
from gbsweep.tracking import Tracker

if TYPE_CHECKING:
    from optuna import Study
    from optuna.trial import FrozenTrial


@dataclass(frozen=True)
class Prepared:
    """A validated sweep: its config and its data, loaded once (forked workers share them)."""

    config: SweepConfig
    dataset: dataset.Dataset


def for_sweep(prepared: Prepared, refit: BestRefit) -> dict[str, Job]:
    """What `sweep run` asks of its recorder process, which has MLflow imported and the store open."""
    return {"parent": _open_parent,
            "finalize": functools.partial(_finalize_once, prepared, refit),
            "finish_parent": _finish_parent_if_possible,
            "repair": functools.partial(_repair_child_runs, prepared)}


class BestRefit:
    """In the recorder process: refit the best trial so far on the training part and score it on
    the holdout, in a thread, while the trials go on (the fit releases the GIL for its trees), so
    that the end of the sweep mostly logs and registers. Only the latest best is kept; without
    `ahead`, the best is fitted at the end only."""

    def __init__(self, prepared: Prepared, ahead: bool = True) -> None:
        self.prepared, self.ahead = prepared, ahead
        self._best: float | None = None
        self._lock = threading.Lock()
        self._wanted: tuple[int, dict] | None = None
        self._done: dict[int, tuple[Any, float]] = {}
        self._thread: threading.Thread | None = None

    def consider(self, agent: Agent, trial: FrozenTrial) -> None:
        """A trial ended (the recorder's hook): refit it when it is the best this recorder has seen."""
        score = studies.candidate(trial)
        if not self.ahead or score is None or (self._best is not None and score <= self._best):
            return
        self._best = score
        with self._lock:
            self._wanted = (trial.number, dict(trial.params))
            if self._thread is None:
                self._thread = threading.Thread(target=self._refit_wanted, name="sweep-refit", daemon=True)
                self._thread.start()

    def model(self, number: int, params: dict) -> tuple[Any, float]:
        """The refitted model of this trial and its holdout score; fitted now unless it was already."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()  # it refits the latest best, the one finalize wants unless another worker found it
        return self._done.get(number) or refit_scored(self.prepared, params)

    def _refit_wanted(self) -> None:
        while True:
            with self._lock:
                wanted, self._wanted = self._wanted, None
                if wanted is None:
                    self._thread = None
                    return
            number, params = wanted
            self._done = {number: refit_scored(self.prepared, params)}


def refit_scored(prepared: Prepared, params: dict) -> tuple[Any, float]:
    """The model the user gets (preprocessing and estimator), fitted on the training part, and its
    score on the holdout."""
    config, data = prepared.config, prepared.dataset
    model = build_model(config, data.preprocessor, params)
    model.fit(data.X_train, data.y_train)
    return model, float(scorer_for(config)(model, data.X_test, data.y_test))


def _open_parent(agent: Agent) -> str:
    """Create the study's parent run, or resume the one it has; link them both ways."""
    try:
        # The study as it is now, not as the sweep read it when it started: a sweep killed at its
        # start may have linked a parent run since.
        study = agent.study()
        known_run_id = study.user_attrs.get(keys.PARENT_RUN_ID)
        parent_run_id = Tracker(agent.uri).parent_run(agent.config, known_run_id, _parent_run_key(study))
        agent.bind(parent_run_id)
    except Exception as error:  # the trials go on; finalize says why nothing was logged
        agent.error = agent.error or f"{type(error).__name__}: {first_line(error)}"
        raise
    agent.study().set_user_attr(keys.PARENT_RUN_ID, parent_run_id)  # `sweep worker`s wait for it
    return parent_run_id


def _parent_run_key(study: Study) -> str:
    """The tag the study's parent run gets (or has): a recorder killed after creating the run and
    before linking it to the study leaves a run the next `sweep run` finds by it, not a second one."""
    import uuid

    key = study.user_attrs.get(keys.PARENT_RUN_KEY)
    if key is None:
        key = uuid.uuid4().hex
        study.set_user_attr(keys.PARENT_RUN_KEY, key)
    return str(key)


def _finalize_once(prepared: Prepared, refit: BestRefit, agent: Agent, status: str,
                   advice_lines: list[str] | None = None) -> dict:
    """finalize, then end the parent run with `status` (FAILED if finalize failed)."""
    if not agent.parent_run_id:
        raise SweepFailed(_STORE_FAILED.format(cause=f"no parent run: {agent.error or 'not created'}"))
    tracker = Tracker(agent.uri)
    try:
        best = finalize(agent.study(), prepared, tracker, agent.parent_run_id, refit.model, advice_lines)
    except SweepFailed:
        _finish_parent_if_possible(agent, "FAILED")
        raise
    except Exception as error:  # MLflow's and the network's many types: the store failed us
        _finish_parent_if_possible(agent, "FAILED")
        full = disk_full(error, database=tracking.local_path(agent.uri))
        if full is not None:  # a write that names no file: MLflow copying an artifact
            raise (full if full.path else DiskFull(tracker.artifact_folder(agent.parent_run_id))) from None
        raise SweepFailed(_STORE_FAILED.format(cause=f"{type(error).__name__}: {first_line(error)}")) from error
    tracker.finish_parent(agent.parent_run_id, status)
    return best


_STORE_FAILED = ("the tracking store failed while finishing the sweep ({cause}); the trials are safe in"
                 " the Optuna storage: once the store is back, run `sweep sync`, then the same"
                 " `sweep run` to promote.")


def finalize(study: Study, prepared: Prepared, tracker: Tracker, parent_run_id: str,
             refitted: Callable[[int, dict], tuple[Any, float]], advice_lines: list[str] | None = None) -> dict:
    """Repair the child runs MLflow missed, log the results (and the range advice, when given: not
    for an interrupted run, whose best may still move) on the parent run, and promote the best model
    once per best trial (`refitted(trial number, params)`: its model and holdout score)."""
    config, data = prepared.config, prepared.dataset
    repaired = child_runs.sync(tracker.client, study, config, parent_run_id)
    if repaired:
        say(f"repaired {repaired} child runs that were left running or that MLflow had missed.")
    if config.trade_off:
        child_runs.tag_front(tracker.client, study, parent_run_id)
    best = studies.best_export(study)  # SweepFailed when no trial kept within the constraints
    tracker.log_results(parent_run_id, config.metric, best, study.trials_dataframe(), studies.best_so_far(study))
    if advice_lines is not None:
        tracker.log_advice(parent_run_id, advice_lines)
    reports.log_plots(tracker.client, parent_run_id, study)
    if study.user_attrs.get(keys.PROMOTED_TRIAL) == best["trial"]:
        say(f"best trial {best['trial']} was promoted already; nothing new to promote.")
        return best
    model, holdout = refitted(best["trial"], study.get_trials(deepcopy=False)[best["trial"]].params)
    measured = {k: v for k, v in best.items() if k in MEASURED}
    promotion = tracker.promote(config, parent_run_id, model, data.X_train.head(5), holdout, best["trial"], measured)
    study.set_user_attr(keys.PROMOTED_TRIAL, best["trial"])
    say(f"registered {config.model_name!r} version {promotion.version} as @{promotion.alias}"
        f" (holdout {config.metric} {holdout:.4f})")
    return best


def _repair_child_runs(prepared: Prepared, agent: Agent) -> None:
    if agent.parent_run_id and agent.client is not None:
        child_runs.sync(agent.client, agent.study(), prepared.config, agent.parent_run_id)


def _finish_parent_if_possible(agent: Agent, status: str) -> None:
    try:
        if agent.parent_run_id:
            Tracker(agent.uri).finish_parent(agent.parent_run_id, status)
    except Exception:  # the store is down: the parent stays RUNNING until the next run or sync
        pass
