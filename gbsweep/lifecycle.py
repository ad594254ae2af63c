"""A sweep's lifecycle: validate before anything is opened, open both stores, run the trials here
and in worker processes, have the recorder finalize once (jobs.py: repair the child runs, log the
results, promote), and leave the documented end state on an interrupt or a failure.

It takes plain values (a config path, an Options); sweep.py turns the command line into them.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gbsweep import advice, carry, child_runs, dataset, jobs, keys, runner, search_space, studies, tracking, workers
from gbsweep.errors import ConfigError, DiskFull, SweepFailed, guard, say
from gbsweep.jobs import Prepared
from gbsweep.objective import check_metric, fold_threads, prepare_folds
from gbsweep.recorder import TrialRecorder
from gbsweep.storages import open_storage
from gbsweep.tracking import Tracker

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from optuna import Study
    from optuna.trial import FrozenTrial

FORKED_WAIT_S = 120  # how long --n-jobs workers wait for the study (validating the stores comes first)


@dataclass(frozen=True)
class Options:
    """How to run: the stores (resolved already) and the command's switches."""

    storage: str
    tracking_uri: str
    n_jobs: int = 1
    quiet: bool = False
    log_format: str = "text"
    promote_on_interrupt: bool = True
    debug: bool = False
    threads: int | None = None  # OpenMP/BLAS threads per worker process (None: the libraries' default)


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    best: dict | None = None  # the export, when there is one to print


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: Optuna fails the running trial (as for Ctrl-C) and stops."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextmanager
def interrupts(second_exits: bool = True) -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted; once one has, a second one exits at once, or, in a
    forked worker, is ignored: a signal to the whole group reaches it twice (once directly, once
    forwarded by `sweep run`), and exiting on the second would leave its trial RUNNING. Its parent
    SIGKILLs a worker that does not stop in time."""

    def first(signum: int, frame: Any) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, (lambda s, f: os._exit(128 + s)) if second_exits else signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, first) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- validation (no store touched)

def prepare(config_path: Path, overrides: dict | None = None) -> Prepared:
    """Validate the space, the data and the metric; raise ConfigError with every problem."""
    config = search_space.load(config_path, overrides=overrides)
    data = dataset.load(config.data, config.is_classifier, config.cv, config.seed)
    check_metric(config, data.y_train)
    return Prepared(search_space.with_early_stop(config, len(data.X_train)), data)


def prepare_from_study(study: Study, local_config: Path | None) -> Prepared:
    """The study's own space and data; a worker whose local file or data differs is refused."""
    config = studies.study_config(study)
    data = dataset.load(config.data, config.is_classifier, config.cv, config.seed)
    if local_config is not None:
        local = search_space.load(local_config, overrides={"study_name": study.study_name})
        if search_space.with_early_stop(local, len(data.X_train)).space_sha256() != config.space_sha256():
            raise ConfigError([f"{local_config}: differs from the search space of study"
                               f" {study.study_name!r}; a worker samples the study's own space."])
    studies.check_same_sweep(study, config, data.digest)
    return Prepared(config, data)


# ---------------------------------------------------------------- sweep run

def run(prepared: Prepared, options: Options) -> Outcome:
    """Check the tracking store, fork the recorder and the workers, open the study, run the
    trials (here and in the workers), then finalize once (in the recorder)."""
    must_open_first = tracking.precheck(options.tracking_uri, prepared.config.experiment)
    planned = carry.plan(options.storage, prepared.config, prepared.dataset.digest)
    workers.limit_threads(options.threads)
    # The recorder and the workers fork now, with the data loaded and nothing opened yet: no
    # import or load again, and no database connection shared across processes.
    refit = jobs.BestRefit(prepared, ahead=_leaves_a_core(prepared, options))
    with interrupts():  # from the first fork on: a SIGTERM while starting must not orphan a worker
        recorder = TrialRecorder(options.tracking_uri, options.storage, prepared.config,
                                 jobs.for_sweep(prepared, refit), on_trial_end=refit.consider)
        forked = workers.fork_workers(options.n_jobs - 1, _forked_worker, options, prepared, recorder)
        try:
            if must_open_first:  # a refused sweep creates no study
                recorder.wait_ready()
            return _run_sweep(prepared, options, recorder, forked, planned)
        except BaseException as error:
            workers.stop_workers(forked, getattr(error, "signum", signal.SIGTERM))
            raise
        finally:
            recorder.stop()


def _leaves_a_core(prepared: Prepared, options: Options) -> bool:
    """Refitting the best ahead takes a core: only where the trials leave one free (a trial that
    fits its folds in threads uses them all)."""
    config = prepared.config
    fold_rows = config.fold_rows(len(prepared.dataset.X_train))
    threads = fold_threads(config.estimator, config.cv, fold_rows, _cores(options))
    return options.n_jobs * threads < workers.usable_cores()


def _cores(options: Options) -> int:
    """The cores one worker process may use: its --threads share, else the machine's."""
    return options.threads or workers.usable_cores()


def _run_sweep(prepared: Prepared, options: Options, recorder: TrialRecorder,
               forked: list[BaseProcess], planned: tuple[FrozenTrial, ...] | None) -> Outcome:
    config = prepared.config
    study = studies.open_study(config, open_storage(options.storage), prepared.dataset.digest,
                               when_new=functools.partial(carry.carry, planned=planned) if planned else None)
    study.set_user_attr(keys.N_TRIALS, config.n_trials)
    # Created while the first trials run (MLflow's import and a new store take seconds); their
    # child runs come right after it, and a trial that ends first waits for its link.
    recorder.send("parent")
    carried = carry.carried_count(study)
    if carried:
        recorder.send("repair")  # the carried trials' child runs, for the UI while the sweep runs
    try:
        ran = run_trials(study, prepared, recorder, options)
        workers.stop_workers(forked)
    except Interrupted as interrupt:
        workers.stop_workers(forked, interrupt.signum)
        workers.fail_stale_trials(study)  # of a worker that had to be killed
        return _after_interrupt(study, prepared, recorder, interrupt, options)
    except runner.BudgetExceeded as error:
        workers.stop_workers(forked, signal.SIGTERM)
        _report_unlogged(_close_runs(recorder, study))
        recorder.call("finish_parent", "FAILED")
        raise SweepFailed(str(error)) from None
    except DiskFull:  # the trial it hit stays running (or failed) in the storage: the resume retries it
        workers.stop_workers(forked, signal.SIGTERM)
        _close_runs(recorder, study)
        recorder.call("finish_parent", "FAILED")  # where MLflow's store has room left
        raise
    _close_runs(recorder, study)  # what it missed, finalize repairs
    before = f"{carried} trials carried over from {study.user_attrs[keys.FROM_STUDY]!r}, " if carried else ""
    now = runner.count(study, config.min_delta)
    say(f"study {config.study_name!r}: {before}{ran} {'' if carried else 'trials '}ran now,"
        f" {now.counted} of {config.n_trials} counted.")
    for line in _search_lines(config, now):
        say(line)
    feasible = studies.feasible_trials(study)
    if config.constraints:
        completed = sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))
        say(f"{len(feasible)} of {completed} completed trials kept within the constraints ({config.limits_text()}).")
    if config.trade_off:
        say(f"the Pareto front of {config.metric} and {config.trade_off}: {len(studies.pareto_front(study))}"
            " trials (`sweep best --pareto` lists them).")
    lines = advice.advise(config, feasible, studies.maximizes(study))
    best = recorder.call("finalize", "FINISHED", lines)
    say(_best_line(config, best))
    for line in lines:  # last, where they are seen: what to change before the next sweep
        say(line)
    return Outcome(0, best)


def _search_lines(config: search_space.SweepConfig, now: runner.Count) -> list[str]:
    """What the search saved: the trees its early stops and pruning did not grow, and a plateau
    that ended the study before its total."""
    lines = []
    if now.saved[1] > now.saved[0]:  # some trees were not grown
        lines.append(f"early stops and pruning: {now.saved_text()}; {now.pruned} trials pruned.")
    if now.plateaued(config.patience) and now.counted < config.n_trials:
        lines.append(f"stopped at a plateau: the best has not risen by more than {config.min_delta:g} in the last"
                     f" {now.since_gain} trials (plateau.patience is {config.patience}); the sweep ends here.")
    return lines


def _best_line(config: search_space.SweepConfig, best: dict) -> str:
    """`best trial 5: roc_auc 0.9918`, with its measured numbers when the sweep weighs them."""
    shown = [f"{config.metric} {best['value']:.4f}"]
    if config.constraints or config.trade_off:
        shown += [f"{name} {best[name]:.3g}" if isinstance(best[name], float) else f"{name} {best[name]}"
                  for name in search_space.MEASURED if name in best]
    return f"best trial {best['trial']}: {', '.join(shown)}"


def run_trials(study: Study, prepared: Prepared, recorder: TrialRecorder, options: Options,
               wait_for_workers: bool = True) -> int:
    """Run trials here until the study has n_trials counted (a worker: until no slot is open)."""
    config, data = prepared.config, prepared.dataset
    finished_before = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    counter = runner.TrialCounter(config.min_delta)
    now = counter.count(study)
    if now.counted >= config.n_trials or now.plateaued(config.patience):
        return 0
    folds = prepare_folds(config, data.X_train, data.y_train, data.preprocessor)
    tally = runner.Tally(config.n_trials, config.max_failures, counter, config.patience)
    threads = fold_threads(config.estimator, len(folds), len(folds[0].y_train), _cores(options))
    objective = runner.TrialRunner(config, folds, recorder, workers.worker_id(), counter, threads)
    progress = runner.Progress(config.study_name, config.n_trials, now.counted, options.quiet, options.log_format)
    try:
        if wait_for_workers:
            runner.run_until_done(study, objective, tally, progress, config.timeout)
        else:
            runner.run_worker(study, objective, tally, progress, config.timeout)
    finally:
        progress.close()
    # A surplus trial (a slot another worker filled first) never ran; a waiting one (the cheap start,
    # enqueued with the study) is counted once it has run.
    return sum(t.state.is_finished() and t.number not in finished_before and not studies.is_surplus(t)
               for t in study.get_trials(deepcopy=False))


def _forked_worker(options: Options, prepared: Prepared, recorder: TrialRecorder) -> None:
    """A --n-jobs worker process: join the study `sweep run` is creating and run its trials; its
    child runs go to the sweep's recorder."""
    options = replace(options, quiet=True)  # one progress bar: the main process's

    def work_forked() -> int:
        # The config attr is set last when the study is created: then it is ready to sample.
        study = studies.join(studies.load_study(options.storage, prepared.config.study_name,
                                                wait_s=FORKED_WAIT_S, attr=keys.CONFIG), prepared.config)
        with interrupts(second_exits=False):
            try:
                run_trials(study, prepared, recorder, options, wait_for_workers=False)
            except Interrupted as interrupt:
                return interrupt.exit_code
            except (runner.BudgetExceeded, DiskFull):
                return 1  # `sweep run` counts the failures and meets the full disk too, and says so
            finally:
                recorder.close_unfinished(study)
        return 0

    try:
        code = guard(work_forked, options.debug)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # `sweep run` may forward one while this one ends
            signal.signal(sig, signal.SIG_IGN)
        recorder.detach()
    os._exit(code)


def _close_runs(recorder: TrialRecorder, study: Study) -> list[int]:
    """Close the child runs of interrupted trials, wait for the queued MLflow writes; return the
    numbers of the trials that could not be logged."""
    recorder.close_unfinished(study)
    return recorder.flush()


def _report_unlogged(unlogged: list[int]) -> None:
    if unlogged == [-1]:
        say("sweep: the MLflow recorder stopped before it wrote every trial; they are safe in the"
            " Optuna storage: run `sweep sync` once the tracking store is back.")
    elif unlogged:
        say(f"sweep: {len(unlogged)} trials could not be logged to MLflow; they are safe in the Optuna"
            " storage: run `sweep sync` once the tracking store is back.")


def _after_interrupt(study: Study, prepared: Prepared, recorder: TrialRecorder, interrupt: Interrupted,
                     options: Options) -> Outcome:
    """Export and (unless told not to) promote the best so far; exit 130 (SIGINT) or 143 (SIGTERM)."""
    unlogged = _close_runs(recorder, study)
    say(f"sweep: interrupted by {interrupt}; {runner.count(study).counted} of {prepared.config.n_trials}"
        " trials counted. Run the same command again to resume.")
    if not options.promote_on_interrupt or studies.best_value(study) is None:
        _report_unlogged(unlogged)
        recorder.call("finish_parent", "KILLED")
        return Outcome(interrupt.exit_code)
    return Outcome(interrupt.exit_code, recorder.call("finalize", "KILLED"))


# ---------------------------------------------------------------- sweep worker, sweep sync

def work(study: Study, prepared: Prepared, options: Options) -> int:
    """A worker's share of the trials: no parent run of its own, no finalize."""
    workers.limit_threads(options.threads)
    tracking.precheck(options.tracking_uri, prepared.config.experiment)
    study = studies.join(study, prepared.config)
    recorder = TrialRecorder(options.tracking_uri, options.storage, prepared.config)
    try:
        recorder.wait_ready()
        recorder.bind(study.user_attrs[keys.PARENT_RUN_ID])
        with interrupts():
            try:
                ran = run_trials(study, prepared, recorder, options, wait_for_workers=False)
            except Interrupted as interrupt:
                say(f"worker: interrupted by {interrupt}; the trial it was running is failed."
                    " Start the worker again to go on.")
                return interrupt.exit_code
            except runner.BudgetExceeded as error:
                raise SweepFailed(str(error)) from None
            finally:  # however the trials ended, their runs are closed and flushed first
                _report_unlogged(_close_runs(recorder, study))
    finally:
        recorder.stop()
    if not options.quiet:
        say(f"worker: {ran} trials ran in study {study.study_name!r}.")
    return 0


def sync(study: Study, tracking_uri: str) -> None:
    """Rebuild the child runs and parent artifacts that MLflow lacks from the Optuna storage."""
    config = studies.study_config(study)
    tracker = Tracker(tracking_uri)
    tracker.check_reachable()
    known = study.user_attrs[keys.PARENT_RUN_ID]
    parent_run_id = tracker.parent_run(config, known, study.user_attrs.get(keys.PARENT_RUN_KEY), resume=False)
    if parent_run_id != known:
        study.set_user_attr(keys.PARENT_RUN_ID, parent_run_id)
        say(f"sync: the parent run was missing; created {parent_run_id}.")
    changed = child_runs.sync(tracker.client, study, config, parent_run_id)
    if config.trade_off:
        child_runs.tag_front(tracker.client, study, parent_run_id)
    if studies.best_value(study) is not None:
        tracker.log_results(parent_run_id, config.metric, studies.best_export(study), study.trials_dataframe(),
                            studies.best_so_far(study))
        tracker.log_advice(parent_run_id, advice.advise(config, studies.feasible_trials(study),
                                                        studies.maximizes(study)))
    say(f"sync: {changed} child runs of study {study.study_name!r} updated"
        f" ({len(study.trials)} trials in the storage).")
