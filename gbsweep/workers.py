"""Worker processes: each one's stamp (host:pid:start), the trials of dead workers failed and
retried, the cores this process may use and each worker's share of threads, forking and stopping
the `--n-jobs` workers.

A trial left running by a dead worker is failed and its params are enqueued again, so nothing is
lost: RDB storages tell by heartbeats, any storage tells, on this host, by the process being gone.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gbsweep import keys, storages

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from optuna import Study

WORKER_STOP_S = 5  # how long workers get to close their trial after an interrupt (a supervisor may give 10 s)


def worker_id() -> str:
    """host:pid:start — enough to tell, on this host, that the process is gone (even if the pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid())}"


def _process_start(pid: int) -> str:
    """The process's start time, "" when it is gone. A killed --n-jobs worker stays a zombie until
    `sweep run` reaps it at the end, and `sweep run` waited forever for the zombie's trial."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return ""
    return "" if fields[0] in ("Z", "X") else fields[19]


def _is_dead(worker: str) -> bool:
    host, pid, start = (worker.split(":") + ["", "", ""])[:3]
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host's worker: only storage heartbeats can tell
    return _process_start(int(pid)) != start


def fail_stale_trials(study: Study, unclaimed: dict[int, float] | None = None) -> None:
    """Fail the trials whose worker died, and enqueue their params again.

    RDB storages tell by heartbeats (and retry through their callback); any storage tells, on this
    host, by the worker's process being gone. A trial that no worker stamped (`unclaimed`: when
    each was first seen so, kept between calls) is failed once it stays so for the grace period:
    its worker lost the storage (or died) between asking for it and stamping it, before any
    heartbeat too, so nothing else would ever fail it (a live worker stamps its trial at once).
    """
    import optuna
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    stale = [t for t in running if _is_dead(t.user_attrs.get(keys.WORKER, ""))]
    if unclaimed is not None:
        now = time.monotonic()  # this process's clock: the workers' clocks may differ
        seen = {t.number: unclaimed.get(t.number, now) for t in running if keys.WORKER not in t.user_attrs}
        unclaimed.clear()
        unclaimed.update(seen)
        stale += [t for t in running if now - seen.get(t.number, now) > storages.GRACE_S]
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={keys.RETRY_OF: trial.number})


def limit_threads(threads: int | None) -> None:
    """Cap this process's OpenMP and BLAS threads (HistGradientBoosting fits with OpenMP).

    Workers side by side, each with as many threads as the machine has cores, fight for them:
    two HistGradientBoosting fits at once ran 40 times slower here. joblib's process workers
    get their share of the cores; so do ours.
    """
    if threads is None:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def cores_per_worker(n_jobs: int) -> int:
    return max(1, usable_cores() // n_jobs)


def fork_workers(n: int, target: Callable[..., None], *args: Any) -> list[BaseProcess]:
    """`n` worker processes running target(*args) (processes, not threads: the GIL).

    Forked, so they start with the parent's imports and data instead of loading them again.
    """
    import multiprocessing

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=target, args=args, name=f"sweep-worker-{i + 1}") for i in range(n)]
    for worker in workers:
        worker.start()
    return list(workers)


def stop_workers(workers: list[BaseProcess], signum: int | None = None) -> list[int | None]:
    """Forward an interrupt (if any) and wait for the workers; return their exit codes."""
    for worker in workers:
        if signum is not None and worker.is_alive() and worker.pid is not None:
            os.kill(worker.pid, signum)
    for worker in workers:
        worker.join(WORKER_STOP_S if signum else None)
        if worker.is_alive():
            worker.kill()
            worker.join()
    return [worker.exitcode for worker in workers]
