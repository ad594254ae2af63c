"""Running trials: one worker's loop, extra worker processes, stale trials and interrupts.

`--n-trials` is the study's total of completed and pruned trials, however many workers share
it: a worker starts a trial only while a slot is open (counted + running < total), so workers
do not overshoot the total, and a trial left running by a dead worker is failed and its params
are enqueued again, so nothing is lost.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

POLL_S = 1.0  # how often a finishing `sweep run` looks at other workers' running trials
WORKER_STOP_S = 30  # how long workers get to close their trial after an interrupt


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: Optuna fails the running trial (as for Ctrl-C) and stops."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class BudgetExceeded(Exception):
    def __init__(self, failed: int, limit: int, last_error: str) -> None:
        super().__init__(f"stopped after {failed} failed trials (max_failures is {limit});"
                         f" the last error: {last_error}")


@contextmanager
def interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted; once one has, a second one exits at once."""

    def first(signum: int, frame: Any) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda s, f: os._exit(128 + s))
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, first) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def worker_id() -> str:
    """host:pid:start — enough to tell, on this host, that the process is gone (even if the pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid())}"


def _process_start(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return ""


def _is_dead(worker: str) -> bool:
    host, pid, start = (worker.split(":") + ["", "", ""])[:3]
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host's worker: only storage heartbeats can tell
    return _process_start(int(pid)) != start


def counts(study: Any) -> tuple[int, int]:
    """(counted trials: completed and pruned, running trials)."""
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    counted = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
    return counted, states.count(TrialState.RUNNING)


def has_slot(study: Any, total: int, trial: Any) -> bool:
    """Whether this just-asked trial is within the total, counting the running trials asked before it."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counted = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    ahead = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in trials)
    return counted + ahead < total


def fail_stale_trials(study: Any) -> None:
    """Fail the trials whose worker died, and enqueue their params again.

    RDB storages tell by heartbeats (and retry through their callback); any storage tells, on this
    host, by the worker's process being gone.
    """
    import optuna
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)
    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
             if _is_dead(t.user_attrs.get("sweep.worker", ""))]
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"sweep.retry_of": trial.number})


@dataclass
class Budget:
    """Optuna callback: stops the worker at the total, or past the failure budget."""

    total: int
    max_failures: int
    failed: int = 0
    last_error: str = ""

    def __call__(self, study: Any, trial: Any) -> None:
        if trial.state.name == "FAIL" and not trial.user_attrs.get("sweep.surplus"):
            self.failed += 1
            self.last_error = trial.user_attrs.get("sweep.error", "")
            if self.failed > self.max_failures:
                study.stop()
        counted, running = counts(study)
        if counted + running >= self.total:
            study.stop()

    def check(self) -> None:
        if self.failed > self.max_failures:
            raise BudgetExceeded(self.failed, self.max_failures, self.last_error)


def run_worker(study: Any, objective: Any, recorder: Any, config: Any, progress: Any = None,
               timeout: float | None = None) -> Budget:
    """Run trials in this process while the study has open slots; raise BudgetExceeded past it."""
    from objective import TrialFailed

    budget = Budget(config.n_trials, config.max_failures)
    callbacks = [lambda study, trial: recorder.close_trial(trial), budget]
    callbacks += [progress] if progress is not None else []
    counted, running = counts(study)
    if counted + running < config.n_trials:
        study.optimize(objective, timeout=timeout, catch=(TrialFailed,), callbacks=callbacks)
    budget.check()
    return budget


def run_until_done(study: Any, objective: Any, recorder: Any, config: Any, progress: Any = None) -> None:
    """run_worker, then wait for other workers' trials, failing stale ones and refilling their slots."""
    deadline = time.monotonic() + config.timeout if config.timeout else None
    while True:
        fail_stale_trials(study)
        left = deadline - time.monotonic() if deadline else None
        if left is not None and left <= 0:
            return
        run_worker(study, objective, recorder, config, progress, left)
        counted, running = counts(study)
        if counted >= config.n_trials:
            return
        if running:
            time.sleep(POLL_S)
        # else the open slots are nobody's: the next pass runs them here


def fork_workers(count: int, target: Any, *args: Any) -> list:
    """`count` worker processes running target(*args) (processes, not threads: the GIL).

    Forked, so they start with the parent's imports and data instead of loading them again.
    """
    import multiprocessing

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=target, args=args, name=f"sweep-worker-{i + 1}") for i in range(count)]
    for worker in workers:
        worker.start()
    return workers


def stop_workers(workers: list, signum: int | None = None) -> list[int]:
    """Forward an interrupt (if any) and wait for the workers; return their exit codes."""
    for worker in workers:
        if signum is not None and worker.is_alive():
            os.kill(worker.pid, signum)
    for worker in workers:
        worker.join(WORKER_STOP_S if signum else None)
        if worker.is_alive():
            worker.kill()
            worker.join()
    return [worker.exitcode for worker in workers]
