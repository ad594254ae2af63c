"""Trials in flight: the objective wrapped with its slot, worker stamp and child run; one worker's
loop; one count per finished trial that the budget and the progress line share.

`--n-trials` is the study's total of completed and pruned trials, however many workers share
it: a worker starts a trial only while a slot is open (counted + running < total), so workers
do not overshoot the total, and a trial left running by a dead worker is failed and its params
are enqueued again, so nothing is lost.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gbsweep import keys, storages, studies
from gbsweep.errors import DiskFull, disk_full, say
from gbsweep.objective import Fold, Footprint, TrialFailed, build_estimator, evaluate, scorer_for
from gbsweep.params import size_param
from gbsweep.search_space import MEASURED, SweepConfig, suggest
from gbsweep.workers import fail_stale_trials

if TYPE_CHECKING:
    from optuna import Study, Trial
    from optuna.trial import FrozenTrial

    from gbsweep.recorder import TrialRecorder

POLL_S = 1.0  # how often a finishing `sweep run` looks at other workers' running trials
LINK_WAIT_MAX_S = 30  # a trial that ends before its run is linked waits for the recorder, this long at most
LINK_POLL_S = 0.002


class BudgetExceeded(Exception):
    def __init__(self, failed: int, limit: int, last_error: str) -> None:
        super().__init__(f"stopped after {failed} failed trials (max_failures is {limit});"
                         f" the last error: {last_error}")


# ---------------------------------------------------------------- one trial

class TrialRunner:
    """Optuna's objective: claims a slot, stamps the worker, opens the child run, then scores the
    trial's params (objective.py) and leaves the result on the trial.

    The child run is completed from the finished trial by the recorder (an Optuna callback), so
    the run says exactly what the storage says.
    """

    def __init__(self, config: SweepConfig, folds: list[Fold], recorder: TrialRecorder,
                 worker: str = "", counter: TrialCounter | None = None, threads: int = 1) -> None:
        self.config, self.folds, self.recorder, self.worker = config, folds, recorder, worker
        self.counter = counter or TrialCounter(config.min_delta)
        self.threads = threads  # folds fitted at once (objective.fold_threads)
        self.scorer = scorer_for(config)
        self.size = size_param(config.estimator)
        self.pruning = config.pruner != "none"
        self.number: int | None = None  # the trial this process runs now, or ran last

    def __call__(self, trial: Trial) -> float | list[float]:
        import optuna

        self.number = trial.number
        storages.after_first_heartbeat(trial)
        trial.set_user_attr(keys.WORKER, self.worker)
        if not self.counter.has_slot(trial.study, self.config.n_trials, trial):
            trial.set_user_attr(keys.SURPLUS, True)
            trial.study.stop()
            raise TrialFailed("surplus: other workers' trials already fill the study's total")
        params = suggest(self.config, trial)
        self.recorder.open_trial(trial)
        footprints: list[Footprint] = []  # one, from a completed or pruned trial
        started = time.perf_counter()
        estimator = build_estimator(self.config, params)
        trial.set_user_attr(keys.TREES_ASKED, estimator.get_params()[self.size])
        reporter = ChunkReporter(trial) if self.pruning else None
        try:
            result = evaluate(estimator, self.folds, self.scorer, reporter, self.size, footprints.append,
                              self.threads)
        except optuna.TrialPruned:
            trial.set_user_attr(keys.TREES, reporter.step if reporter else 0)  # pruned at that many trees
            raise
        except (DiskFull, storages.StorageLost):  # the storage's failures, not the trial's
            raise
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            trial.set_user_attr(keys.ERROR, message[:1000])
            raise TrialFailed(message) from error
        except KeyboardInterrupt as interrupt:
            trial.set_user_attr(keys.ERROR, f"interrupted ({interrupt})")
            raise
        finally:
            measuring = sum(f.measure_s for f in footprints)
            trial.set_user_attr(keys.FIT_TIME_S, time.perf_counter() - started - measuring)
            for measured in footprints:
                self._measured(trial, measured)
            _link_run(trial, self.recorder)
        trial.set_user_attr(keys.SCORE_STD, result.score_std)
        trial.set_user_attr(keys.TREES, result.trees)
        if self.config.trade_off:
            return [result.score, trial.user_attrs[MEASURED[self.config.trade_off]]]
        return result.score

    def _measured(self, trial: Trial, footprint: Footprint) -> None:
        """Keep the model's numbers on the trial, and how far each lies past its limit: the
        sampler learns the feasible region from these, and the best trial is a feasible one."""
        trial.set_user_attr(keys.PREDICT_MS, footprint.predict_ms)
        trial.set_user_attr(keys.MODEL_BYTES, footprint.model_bytes)
        for name, value in (self.config.constraint_values(trial.user_attrs) or {}).items():
            trial.set_constraint(name, value)


class ChunkReporter:
    """Reports a growing ensemble's score after each chunk of trees, and raises TrialPruned when
    the pruner stops it; remembers the last chunk's trees (what a pruned trial grew)."""

    def __init__(self, trial: Trial) -> None:
        self.trial, self.step = trial, 0

    def __call__(self, step: int, value: float) -> None:
        import optuna

        self.step = step
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after {step} trees")


def _link_run(trial: Trial, recorder: TrialRecorder) -> None:
    """Let the recorder finish linking the child run to the trial, when the trial ended first.

    The recorder writes the run id into the trial while it runs, so a trial that fits for longer
    than a request takes never waits here. One that ends first (a very short trial, or one of the
    first trials while MLflow starts) waits until the recorder has tried, since a finished trial
    cannot take the run id any more; not while the store is down or the recorder is gone (then
    `sweep sync` finds the run by its tags).
    """
    deadline = time.monotonic() + LINK_WAIT_MAX_S
    while not recorder.link_tried(trial.number) and recorder.can_link() and time.monotonic() < deadline:
        time.sleep(LINK_POLL_S)


# ---------------------------------------------------------------- counting trials

@dataclass(frozen=True)
class Count:
    """The study's trials at one moment."""

    counted: int  # completed and pruned: what --n-trials counts
    running: int
    best: float | None  # the best completed metric within the constraints (the study maximizes it)
    since_gain: int = 0  # counted trials since the best last rose by more than min_delta (`plateau:`)
    saved: tuple[float, float, float] = (0.0, 0.0, 0.0)  # trees grown, asked, seconds saved (studies.trees_saved)
    pruned: int = 0

    def saved_text(self) -> str:
        """`41% of the trees not grown (12,300 of 30,000 per fold), about 85 s of fitting saved`."""
        grown, asked, seconds = self.saved
        share = 1 - grown / asked if asked else 0.0
        return (f"{share:.0%} of the trees not grown ({asked - grown:,.0f} of {asked:,.0f} per fold),"
                f" about {seconds:,.0f} s of fitting saved")

    def plateaued(self, patience: int | None) -> bool:
        return patience is not None and self.since_gain >= patience


class TrialCounter:
    """Counts the study's trials incrementally: each look reads only the trials that were
    unfinished at the last look and the new ones (a finished trial never changes), so a
    worker's cost per trial does not grow with the study. A gain is a best that beats the best at
    the last gain by more than `min_delta`; the counted trials since then are the plateau's length."""

    def __init__(self, min_delta: float = 0.0) -> None:
        self.min_delta = min_delta
        self._gain: float | None = None
        self._since_gain = 0
        self._saved = (0.0, 0.0, 0.0)
        self._pruned = 0
        self._seen = 0
        self._unfinished: set[int] = set()  # numbers of the trials running or waiting at the last look
        self._running: list[int] = []
        self._counted = 0
        self._best: float | None = None

    def count(self, study: Study, trials: list[FrozenTrial] | None = None) -> Count:
        """The count now, from `trials` when the caller has just read them (all of them, by number)."""
        from optuna.trial import TrialState

        if trials is None:
            trials = study.get_trials(deepcopy=False)  # by number: trials[n].number == n
        self._running = []
        for number in [*self._unfinished, *range(self._seen, len(trials))]:
            trial = trials[number]
            if not trial.state.is_finished():
                self._unfinished.add(number)
                if trial.state == TrialState.RUNNING:
                    self._running.append(number)
                continue
            self._unfinished.discard(number)
            counts = trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
            self._counted += counts
            self._pruned += trial.state == TrialState.PRUNED
            grown, asked, seconds = studies.trees_saved(trial)
            self._saved = (self._saved[0] + grown, self._saved[1] + asked, self._saved[2] + seconds)
            self._since_gain += counts
            score = studies.candidate(trial)
            if score is not None and (self._best is None or score > self._best):
                self._best = score
            if score is not None and (self._gain is None or score > self._gain + self.min_delta):
                self._gain, self._since_gain = score, 0
        self._seen = len(trials)
        return Count(self._counted, len(self._running), self._best, self._since_gain, self._saved, self._pruned)

    def has_slot(self, study: Study, total: int, trial: Trial) -> bool:
        """Whether this just-asked trial is within the total, counting the running trials asked before it."""
        now = self.count(study, studies.trials_as_sampled(study))
        ahead = sum(number < trial.number for number in self._running)
        return now.counted + ahead < total


def count(study: Study, min_delta: float = 0.0) -> Count:
    """One look at every trial of the study."""
    return TrialCounter(min_delta).count(study)


@dataclass
class Tally:
    """One worker's finished trials: failures against max_failures, and the study's count, taken
    once per finished trial and read by the budget and the progress line alike."""

    total: int
    max_failures: int
    counter: TrialCounter = field(default_factory=TrialCounter)
    patience: int | None = None  # `plateau:` stop after this many counted trials without a gain
    failed: int = 0
    last_error: str = ""
    now: Count = Count(0, 0, None)

    def add(self, study: Study, trial: FrozenTrial) -> None:
        """Count the finished trial; stop the worker at the study's total or past the failure budget."""
        if trial.state.name == "FAIL" and not studies.is_surplus(trial):
            self.failed += 1
            self.last_error = trial.user_attrs.get(keys.ERROR, "")
        self.now = self.counter.count(study)
        if self.failed > self.max_failures or self.now.counted + self.now.running >= self.total \
                or self.now.plateaued(self.patience):
            study.stop()

    def check(self) -> None:
        if self.failed > self.max_failures:
            raise BudgetExceeded(self.failed, self.max_failures, self.last_error)


class Progress:
    """The progress bar (or one JSON line per finished trial), and one line per failed trial."""

    def __init__(self, study_name: str, total: int, counted: int, quiet: bool, log_format: str = "text") -> None:
        from tqdm import tqdm

        self.total = total
        self.json_lines = log_format == "json"  # one JSON line per finished trial, instead of the bar
        # The study's done/total: a resumed sweep starts past 0, and other workers' trials count too.
        self.bar = tqdm(total=total, initial=counted, desc=study_name, unit="trial", file=sys.stderr,
                        disable=quiet or self.json_lines, dynamic_ncols=True)

    def show(self, trial: FrozenTrial, tally: Tally) -> None:
        if studies.is_surplus(trial):
            return
        if self.json_lines:
            line = {**studies.trial_row(trial), "error": trial.user_attrs.get(keys.ERROR)}
            say(json.dumps(line, default=str))
        if trial.state.name == "FAIL":
            if not self.json_lines:
                self.bar.write(f"trial {trial.number} failed: {tally.last_error}", file=sys.stderr)
            return
        self.bar.update(max(0, min(tally.now.counted, self.total) - self.bar.n))
        best = tally.now.best
        grown, asked, _ = tally.now.saved
        postfix = {"best": f"{best:.4f}" if best is not None else "-", "pruned": tally.now.pruned,
                   "trees saved": f"{1 - grown / asked:.0%}" if asked else "-", "failed": tally.failed}
        self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------- a worker's loop

def run_worker(study: Study, objective: TrialRunner, tally: Tally, progress: Progress | None = None,
               timeout: float | None = None) -> None:
    """Run trials in this process while the study has open slots; raise BudgetExceeded past it."""

    def after_trial(study: Study, trial: FrozenTrial) -> None:
        objective.recorder.close_trial(trial)
        tally.add(study, trial)
        if progress is not None:
            progress.show(trial, tally)

    deadline = time.monotonic() + timeout if timeout else None
    while _has_open_slots(study, tally):
        try:
            study.optimize(objective, timeout=deadline - time.monotonic() if deadline else None,
                           catch=(TrialFailed,), callbacks=[after_trial])
            break
        except Exception as error:  # Optuna may raise another error (its own) while handling the storage's
            cause = disk_full(error) or storages.storage_lost(error)
            if cause is not None:
                raise cause from None
            if not _finished_elsewhere(study, objective.number):
                raise
        if deadline and time.monotonic() >= deadline:
            break
    tally.check()


def _has_open_slots(study: Study, tally: Tally) -> bool:
    now = tally.counter.count(study)
    return now.counted + now.running < tally.total and not now.plateaued(tally.patience)


def _finished_elsewhere(study: Study, number: int | None) -> bool:
    """Whether this process's trial was finished by another: its heartbeats went silent (the host
    cut off from the storage, or paused) for the grace period, so a worker of the study failed it
    and retries its params. This process lost the trial, not the sweep: it says so and goes on
    (its result is not told, so not counted; `sweep run` completes its child run from the study)."""
    if number is None:
        return False
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or not trial.state.is_finished():
        return False
    say(f"trial {number}: failed by the study's other workers while this process could not reach the"
        f" storage for {storages.GRACE_S} s (its heartbeats stopped); its params are retried there,"
        " and this process goes on.")
    return True


def run_until_done(study: Study, objective: TrialRunner, tally: Tally, progress: Progress | None = None,
                   timeout: float | None = None) -> None:
    """run_worker, then wait for other workers' trials, failing stale ones and refilling their slots."""
    deadline = time.monotonic() + timeout if timeout else None
    unclaimed: dict[int, float] = {}
    while True:
        fail_stale_trials(study, unclaimed)
        left = deadline - time.monotonic() if deadline else None
        if left is not None and left <= 0:
            return
        run_worker(study, objective, tally, progress, left)
        now = tally.counter.count(study)
        if now.counted >= tally.total or (now.plateaued(tally.patience) and not now.running):
            return
        if now.running:
            time.sleep(POLL_S)
        # else the open slots are nobody's: the next pass runs them here
