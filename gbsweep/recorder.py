"""The sweep's MLflow side, in a process of its own: it opens the tracking store, runs the jobs
lifecycle.py hands it (the parent run, the finalize), creates each trial's child run when the
trial starts and links it to the trial, and completes the run when the trial ends.

A process, not a thread: MLflow's client spends tens of ms of Python per request (SQLAlchemy),
which a thread would take from the fitting through the GIL. With MLflow's import and the store's
opening over there, the trials start while MLflow is still getting ready, and no trial waits for
its run: the recorder writes the run id into the trial itself. It is forked before any store is
opened and before the --n-jobs workers, which share it. A failing store is retried with backoff;
what still fails is reported for `sweep sync`.

Against a tracking server over the network, each request waits a round trip: the recorder then
completes runs in a few threads (the waits release the GIL), so the runs of short trials do not
queue one after another behind the link, and creating a run never waits behind completing one.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from gbsweep import keys, storages
from gbsweep.child_runs import (
    RunState,
    TrialRecord,
    ms,
    one_run,
    run_tags,
    trial_record,
    with_retries,
    write_record,
)
from gbsweep.errors import ConfigError, SweepFailed, first_line, mask_uri
from gbsweep.tracking import create_sqlite_store_whole, use_quick_client_settings

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event

    from mlflow import MlflowClient
    from optuna import Study, Trial
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

    from gbsweep.search_space import SweepConfig

FLUSH_TIMEOUT_S = 120  # how long the end of a sweep waits for queued MLflow writes
JOB_TIMEOUT_S = 3600  # finalize refits on the whole training part; a dead recorder is seen at once
READY_TIMEOUT_S = 120  # a new store's tables take seconds to create here
STORE_DOWN_PAUSE_S = 30  # after a write failed all its retries, later writes wait this long unsent
ALIVE_POLL_S = 0.5  # how often a waiting side checks that the other one still runs
# A child run created this long after asking, or not linked to its trial (finished by then), may
# have a twin from the repair: its trial's close looks for one first (child_runs.one_run).
SLOW_CREATE_S = 1.0
# Runs completed at once against a tracking server over HTTP: three requests a trial, each a round
# trip, so a link 50 ms long lets one thread complete about 5 trials a second, and four about 20.
COMPLETING_THREADS = 4
# The recorder marks each trial whose link it has tried in a ring shared with the workers, so a
# trial that ends first waits on memory, not on storage reads (each a full load of the study's
# trials, many round trips on a storage far away). The ring holds far more trials than run at once.
LINK_SLOTS = 4096

Job = Callable[..., Any]  # job(agent, *args), run in the recorder's process
TrialHook = Callable[["Agent", "FrozenTrial"], None]


class RecorderGone(Exception):
    """The recorder process exited (it was killed): nothing is left to wait for."""


class TrialRecorder:
    """The handle the sweep's processes hold: requests go to the recorder process through a queue."""

    def __init__(self, tracking_uri: str, storage_spec: str, config: SweepConfig,
                 jobs: dict[str, Job] | None = None, on_trial_end: TrialHook | None = None) -> None:
        """Fork the recorder; do it before this process opens a store, so no connection is shared.

        `on_trial_end(agent, trial)` runs in the recorder once a finished trial's run is written."""
        import multiprocessing

        context = multiprocessing.get_context("fork")  # starts at once, with the data loaded
        self._requests, self._replies = context.Queue(), context.Queue()
        self.store_down = context.Event()  # set while writes fail: trials then do not wait for links
        self._tried = context.Array("q", [-1] * LINK_SLOTS, lock=False)  # see LINK_SLOTS
        agent = Agent(tracking_uri, storage_spec, config, self.store_down, self._tried, on_trial_end)
        self._process = context.Process(target=_serve, name="sweep-mlflow-recorder", daemon=True,
                                        args=(agent, jobs or {}, self._requests, self._replies))
        self._process.start()
        self._owner = os.getpid()
        self.tracking_uri = tracking_uri
        self._open: set[int] = set()
        self._stash: list[tuple] = []  # replies that came while another was awaited

    # ---- the sweep's side

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until the recorder has opened the store; a store that cannot be used is a ConfigError."""
        try:
            (error,) = self._reply("ready", timeout)
        except (RecorderGone, TimeoutError):
            error = "the MLflow recorder did not open it"
        if error:
            raise ConfigError([f"tracking URI {mask_uri(self.tracking_uri)}: cannot be used: {error}"])

    def bind(self, parent_run_id: str) -> None:
        """Record child runs under this parent run (a `sweep worker` joins an existing one)."""
        self._requests.put(("bind", parent_run_id))

    def send(self, job: str, *args: Any) -> None:
        """Run a job in the recorder, after what was queued before it; its result is not awaited."""
        self._requests.put(("job", job, args, False))

    def call(self, job: str, *args: Any, timeout: float = JOB_TIMEOUT_S) -> Any:
        """Run a job in the recorder and return its result; a ConfigError or SweepFailed it raises is
        raised here, any other failure becomes SweepFailed."""
        self._requests.put(("job", job, args, True))
        try:
            ok, result, said = self._reply(f"job:{job}", timeout)
        except (RecorderGone, TimeoutError) as error:
            raise SweepFailed(f"the MLflow recorder stopped before it finished {job} ({error}); the"
                              " trials are safe in the Optuna storage: run the same command again to log"
                              " and promote them.") from None
        print(said, end="", file=sys.stderr, flush=True)
        if ok:
            return result
        kind, message = result
        raise (ConfigError(message.splitlines()) if kind == "ConfigError" else SweepFailed(message))

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> list[int]:
        """Wait for the queued writes; return the numbers of the trials that could not be logged
        ([-1]: the recorder stopped or hung, so which is not known)."""
        self._requests.put(("flush",))
        try:
            (unlogged,) = self._reply("unlogged", timeout)
        except (RecorderGone, TimeoutError):
            return [-1]
        return list(unlogged)

    def stop(self) -> None:
        """End the recorder once what is queued is written (or at once when it hangs)."""
        if self._process.is_alive():
            self._requests.put(("stop",))
            self._process.join(FLUSH_TIMEOUT_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    # ---- every worker's side (a forked worker holds a copy of the handle)

    def open_trial(self, trial: Trial) -> None:
        """Queue the creation of the trial's RUNNING child run; the recorder links it to the trial."""
        self._requests.put(("open", trial.number, ms(trial.datetime_start)))
        self._open.add(trial.number)

    def close_trial(self, trial: FrozenTrial) -> None:
        """Queue the finished trial's params, metrics and status (an Optuna callback calls this).

        A trial that opened no run (a surplus one, refused a slot) gets none.
        """
        if trial.number in self._open:
            self._requests.put(("close", trial))
            self._open.discard(trial.number)

    def close_unfinished(self, study: Study) -> None:
        """Close the runs of trials that ended without Optuna's callbacks (an interrupt)."""
        trials = study.get_trials(deepcopy=False)
        for number in sorted(self._open):
            self.close_trial(trials[number])

    def link_tried(self, number: int) -> bool:
        """Whether the recorder has tried to link the trial's run to it (it is on the trial if it could)."""
        return self._tried[number % LINK_SLOTS] == number

    def can_link(self) -> bool:
        """Whether a trial's link can still come: the recorder runs and the store answers."""
        return not self.store_down.is_set() and self._alive()

    def _alive(self) -> bool:
        if os.getpid() == self._owner:
            return self._process.is_alive()
        try:  # a forked worker cannot ask multiprocessing about its sibling
            os.kill(self._process.pid or 0, 0)
        except ProcessLookupError:
            return False
        return True

    def detach(self) -> None:
        """In a forked worker about to exit: push what it queued into the pipe first."""
        self._requests.close()
        self._requests.join_thread()

    def _reply(self, kind: str, timeout: float) -> tuple:
        """The next reply of this kind (others are kept for their own wait)."""
        deadline = time.monotonic() + timeout
        while True:
            for index, (got, *values) in enumerate(self._stash):
                if got == kind:
                    del self._stash[index]
                    return tuple(values)
            try:
                self._stash.append(self._replies.get(timeout=min(ALIVE_POLL_S, timeout)))
                continue
            except queue.Empty:
                pass
            if not self._process.is_alive():
                raise RecorderGone(f"exit code {self._process.exitcode}")
            if time.monotonic() >= deadline:
                self._process.kill()  # stuck on a store that does not answer
                raise TimeoutError(f"no answer in {timeout:g} s")


class Agent:
    """What the recorder process holds: the store's client, the sweep and its parent run, the
    trials' open runs, and what could not be logged. Jobs get it as their first argument."""

    def __init__(self, tracking_uri: str, storage_spec: str, config: SweepConfig, store_down: Event,
                 tried: Any, on_trial_end: TrialHook | None = None) -> None:
        self.uri, self.storage_spec, self.config = tracking_uri, storage_spec, config
        self.store_down, self.on_trial_end = store_down, on_trial_end
        self.tried = tried  # the ring of trials whose link was tried, shared with the workers (LINK_SLOTS)
        self.client: MlflowClient | None = None
        self.error = ""  # why the store or the parent run could not be had, in one line
        self.parent_run_id, self.experiment_id = "", ""
        self.opened: dict[int, RunState] = {}
        self.late: set[int] = set()  # trials whose run was created late (SLOW_CREATE_S)
        self.unlogged: set[int] = set()
        self._down_until = 0.0
        self._storage: BaseStorage | None = None
        self._study_id: int | None = None
        self._completing: ThreadPoolExecutor | None = None  # over HTTP only: see COMPLETING_THREADS
        self._in_flight: list[Future] = []
        self._hook_lock = threading.Lock()  # the hook keeps the best seen: one trial at a time

    def open_store(self) -> str:
        """Open the tracking store; '' when it works, else why not (one line)."""
        from mlflow import MlflowClient

        use_quick_client_settings()
        try:
            create_sqlite_store_whole(self.uri)
            self.client = MlflowClient(self.uri)
            self.client.search_experiments(max_results=1)
            if self.uri.startswith(("http://", "https://")):  # an embedded store gains nothing from threads
                self._completing = ThreadPoolExecutor(COMPLETING_THREADS, thread_name_prefix="sweep-complete")
        except Exception as error:  # MLflow wraps network and database errors in many types
            self.client = None
            self.error = first_line(error)
        return self.error

    def bind(self, parent_run_id: str) -> None:
        assert self.client is not None
        self.experiment_id = self.client.get_run(parent_run_id).info.experiment_id
        self.parent_run_id = parent_run_id

    def study(self) -> Study:
        """The sweep's study, through this process's own storage connection."""
        import optuna

        return optuna.load_study(study_name=self.config.study_name, storage=self.storage())

    def storage(self) -> BaseStorage:
        if self._storage is None:
            self._storage = storages.open_storage(self.storage_spec)
        return self._storage

    def open_run(self, number: int, start_ms: int) -> None:
        tags = run_tags(number, "RUNNING", self.config.study_name, self.parent_run_id)
        record = TrialRecord(number, "RUNNING", {}, [], tags, start_ms, None)
        started = time.monotonic()
        # A create that failed once is retried for seconds: the trial stops waiting for its link
        # then (a host cut off from the server would stall each trial); its close finds the run.
        run_id = self._write(record, None, failed_once=functools.partial(self._link_tried, number))
        if run_id is not None:
            self.opened[number] = RunState(run_id, {}, frozenset(), dict(tags), "RUNNING")
            if not self._link(number, run_id) or time.monotonic() - started > SLOW_CREATE_S:
                self.late.add(number)
        self._link_tried(number)

    def _link_tried(self, number: int) -> None:
        self.tried[number % LINK_SLOTS] = number

    def complete(self, trial: FrozenTrial) -> None:
        """Complete the trial's run: in a thread of its own over HTTP, else now."""
        if self._completing is None:
            self.close_run(trial)
            return
        self._in_flight = [future for future in self._in_flight if not future.done()]
        self._in_flight.append(self._completing.submit(self.close_run, trial))

    def settle(self) -> None:
        """Wait for the runs being completed: what comes next (a job, a flush, the end) sees them."""
        in_flight, self._in_flight = self._in_flight, []
        for future in in_flight:
            future.result()

    def close_run(self, trial: FrozenTrial) -> None:
        record = trial_record(trial, self.config, self.config.study_name, self.parent_run_id)
        run = self.opened.pop(trial.number, None)
        if trial.number in self.late:  # its run may have a twin: see child_runs.one_run
            self.late.discard(trial.number)
            run = self._one_run(trial.number) or run
        self._write(record, run)
        if self.on_trial_end is not None:
            with self._hook_lock:
                self.on_trial_end(self, trial)

    def _write(self, record: TrialRecord, run: RunState | None,
               failed_once: Callable[[], None] | None = None) -> str | None:
        """Write the record (retried); None, and the trial kept for the repair, when the store fails."""
        try:
            if self.client is None or not self.parent_run_id or time.monotonic() < self._down_until:
                raise ConnectionError("the tracking store is not usable now")
            run_id, _ = with_retries(functools.partial(write_record, self.client, self.experiment_id, record, run),
                                     failed_once=failed_once)
        except Exception:  # the store stayed unusable: the trial waits for a repair or `sweep sync`
            self.unlogged.add(record.number)
            self._down_until = max(self._down_until, time.monotonic() + STORE_DOWN_PAUSE_S)
            self.store_down.set()
            return None
        self.unlogged.discard(record.number)
        self.store_down.clear()
        return str(run_id)

    def _link(self, number: int, run_id: str) -> bool:
        """Keep the child run id on the trial, while it runs (a finished trial cannot take it: then
        the readers find the run by its tags); whether it took it."""
        try:
            storage = self.storage()
            if self._study_id is None:
                self._study_id = storage.get_study_id_from_name(self.config.study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(self._study_id, number)
            storage.set_trial_user_attr(trial_id, keys.RUN_ID, run_id)
        except Exception:  # the trial finished first, or the storage is busy: the tags still tell
            return False
        return True

    def _one_run(self, number: int) -> RunState | None:
        """The trial's one run, its twins deleted; None when the store cannot tell now."""
        if self.client is None:
            return None
        try:
            return one_run(self.client, self.experiment_id, self.parent_run_id, number)
        except Exception:  # the write that follows meets the same store, and says so
            return None


def _serve(agent: Agent, jobs: dict[str, Job], requests: Any, replies: Any) -> None:
    """The recorder process: open the store, then serve requests until told to stop."""
    # The sweep ends the recorder once it has flushed it; a Ctrl-C or a SIGTERM sent to the whole
    # process group must not cut the last writes (the recorder ends when its parent is gone).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()
    replies.put(("ready", agent.open_store()))
    pending: deque[tuple] = deque()
    while (request := _next_request(requests, pending, parent)) is not None and request[0] != "stop":
        kind, *args = request
        if kind == "open":
            agent.open_run(*args)
            continue
        if kind == "close":
            agent.complete(*args)
            continue
        agent.settle()
        if kind == "bind":
            _bind(agent, *args)
        elif kind == "job":
            _run_job(agent, jobs, replies, *args)
        elif kind == "flush":
            replies.put(("unlogged", sorted(agent.unlogged)))
    if request is not None:  # told to stop: what is being written ends first
        agent.settle()


def _bind(agent: Agent, parent_run_id: str) -> None:
    try:
        agent.bind(parent_run_id)
    except Exception:  # the store is down: the runs wait for the repair or `sweep sync`
        pass


def _run_job(agent: Agent, jobs: dict[str, Job], replies: Any, name: str, args: tuple, answer: bool) -> None:
    """Run a job; what it says on stderr goes back with its result, for the sweep to say in order."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            result: Any = (True, jobs[name](agent, *args))
    except (ConfigError, SweepFailed) as error:
        result = (False, (type(error).__name__, str(error)))
    except Exception as error:  # the store's and the network's many types
        result = (False, ("SweepFailed", f"{type(error).__name__}: {first_line(error)}"))
    if answer:
        replies.put((f"job:{name}", *result, said.getvalue()))


def _next_request(requests: Any, pending: deque[tuple], parent: int) -> tuple | None:
    """The next request to serve: a trial's "open" goes before the "close"s queued ahead of it
    (a running trial wants its run id; a finished one can wait), never before another request.
    None when the sweep died (kill -9) and left the recorder alone: what it queued is dropped (the
    next `sweep run` repairs the runs), since a recorder serving a dead sweep's queue raced the
    restarted sweep's recorder to create the study's parent run, and two parents were made."""
    if os.getppid() != parent:
        return None
    while not pending:
        try:
            pending.append(requests.get(timeout=1))
        except queue.Empty:
            if os.getppid() != parent:
                return None
    while True:
        try:
            pending.append(requests.get_nowait())
        except queue.Empty:
            break
    for index, request in enumerate(pending):
        if request[0] == "open":
            del pending[index]
            return request
        if request[0] != "close":
            break
    return pending.popleft()
