"""Optuna's storages as a sweep opens them: a spec -> an RDB storage with heartbeats, a Redis
journal, or a journal file several processes share.

The journal file is written without an fsync per record, and a record a crash cut off is cut away
on open. Every RDB storage rides out a database restart: a call that loses its connection is tried
again for a while (OUTAGE_S), and past that the sweep stops with one line saying to run the same
command again (StorageLost). So `sweep run`, each `sweep worker`, their trials' heartbeats and the
recorder ride out the same restart the same way.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gbsweep.errors import ConfigError, SweepFailed, causes, disk_full, first_line, mask_uri, say

if TYPE_CHECKING:
    from optuna import Trial
    from optuna.storages import BaseStorage

# RDB storages: a running trial's worker writes a heartbeat every SWEEP_HEARTBEAT_S seconds, and
# a trial silent for SWEEP_GRACE_S is failed and its params retried (by any worker of the study).
HEARTBEAT_S = int(os.environ.get("SWEEP_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("SWEEP_GRACE_S", "60"))
MAX_RETRIES = 3  # how often a trial of a dead worker is retried
STALE_LOCK_S = 10


def open_storage(spec: str) -> BaseStorage:
    """An RDB URL (with heartbeats), a redis:// journal, or else a journal file several processes share."""
    import optuna
    from optuna.storages.journal import JournalRedisBackend

    try:
        if spec.startswith("redis://"):
            return optuna.storages.JournalStorage(JournalRedisBackend(spec))
        if "://" in spec:
            # No pool_pre_ping: its ping is one more round trip per storage call (a sixth of a
            # trial's statements), and a connection lost to a restart is retried by Outage.
            return _with_retries(lambda: PatientRDBStorage(
                _with_driver(spec), mask_uri(spec),
                heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRIES),
            ))
        return optuna.storages.JournalStorage(PageCacheJournal(spec))
    except ImportError as error:
        raise ConfigError([f"storage {mask_uri(spec)}: needs the Python package {error.name!r}"
                           " (pip install it into this environment)."]) from None
    except Exception as error:  # SQLAlchemy, redis and OS errors: one cause, the store is unusable
        raise ConfigError([f"storage {mask_uri(spec)}: cannot be used: {first_line(error)}"]) from None


def after_first_heartbeat(trial: Trial) -> None:
    """Wait until a new trial's first heartbeat is in the database (RDB storages only); its worker
    stamps it after that.

    Optuna's heartbeat thread records it on a connection of its own, and under load the stamp and
    the params were often in the database first (most trials of four workers on two cores).
    Optuna never counts a trial without a heartbeat as stale, and only unstamped trials are failed
    by the unclaimed rule (workers.fail_stale_trials), so a worker cut off in between left its
    trial running for good, and `sweep run` waiting for it. Heartbeat, then stamp: every running
    trial falls under one of the two rules. Optuna gives no public way to a trial's storage and
    id, hence `_storage` and `_trial_id`.
    """
    if not getattr(trial.study._storage, "get_heartbeat_interval", lambda: None)():
        return
    trial_id = trial._trial_id
    with _beaten_lock:
        _beaten_lock.wait_for(lambda: trial_id in _beaten, timeout=2 * OUTAGE_S)


def PageCacheJournal(path: str) -> Any:  # noqa: N802 - a class, built on first use (lazy optuna import)
    """Optuna's journal file, written without an fsync per record.

    Optuna fsyncs every record (about 1 ms each, ten records a trial: most of a short trial's
    overhead here). A record is still one write of whole lines under the file lock, so a killed
    process loses nothing (its writes are in the OS's page cache); only an OS crash can lose the
    last records. The file stays a plain journal that the Optuna CLI and optuna-dashboard read.
    A record such a crash left cut off is cut away on open (repair_torn_tail).
    """
    global _PageCacheJournal
    if _PageCacheJournal is None:
        _PageCacheJournal = _define_page_cache_journal()
    return _PageCacheJournal(path)


_PageCacheJournal: Any = None


def _define_page_cache_journal() -> type:
    import json

    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    class PageCacheJournalBackend(JournalFileBackend):
        def __init__(self, path: str) -> None:
            # A lock left by a killed process is broken after this grace (a write holds it for ms).
            self._lock_obj = JournalFileSymlinkLock(path, grace_period=STALE_LOCK_S)
            super().__init__(path, lock_obj=self._lock_obj)
            self._path = path
            if _ends_torn(path):  # under the lock: a writer's record may just be half on disk
                self._lock_obj.acquire()
                try:
                    repair_torn_tail(path)
                finally:
                    self._lock_obj.release()

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            lines = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
            self._lock_obj.acquire()
            try:
                append_whole(self._path, lines)
            finally:
                self._lock_obj.release()

    return PageCacheJournalBackend


def _ends_torn(path: str) -> bool:
    """Whether the journal's last byte is not the end of a record (one read, on every open)."""
    with open(path, "rb") as journal:
        if journal.seek(0, os.SEEK_END) == 0:
            return False
        journal.seek(-1, os.SEEK_END)
        return journal.read(1) != b"\n"


def repair_torn_tail(path: str) -> None:
    """Cut the journal back to its last whole record, and say so; hold the journal lock.

    Optuna skips a last line without its newline when it reads, but the next record is appended
    after those bytes and glued onto them: that record is lost and every later read fails. An OS
    crash before the disk write leaves such a tail (or NUL bytes), as can a write that was killed.
    """
    records = end = size = 0  # whole records, where the last one ends, bytes read
    with open(path, "r+b") as journal:
        for chunk in iter(lambda: journal.read(1 << 20), b""):
            records += chunk.count(b"\n")
            if (last := chunk.rfind(b"\n")) >= 0:
                end = size + last + 1
            size += len(chunk)
        if end == size:  # whole after all: the record being written when we looked is complete now
            return
        journal.truncate(end)
        os.fsync(journal.fileno())  # the repair itself should not be lost
    cut = size - end
    say(f"sweep: warning: {path}: its last record was cut off ({cut} byte{'s' * (cut != 1)}, as a crash"
        f" before the disk write can leave it); read the {records} record{'s' * (records != 1)} before it.")


def _with_retries(open_rdb: Callable[[], Any], attempts: int = 5) -> Any:
    """Workers that start together on an empty database race to create Optuna's tables; the
    losers see a duplicate-key error and find the tables there on the next try."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return open_rdb()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):  # duplicate key or table
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _with_driver(url: str) -> str:
    """postgresql:// means psycopg (v3) to SQLAlchemy 2; use psycopg2 where only it is installed."""
    import importlib.util

    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "postgresql" and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return urllib.parse.urlunsplit(parts._replace(scheme="postgresql+psycopg2"))
    return url


def append_whole(path: str, data: bytes) -> None:
    """Append all of `data` to the journal, or nothing: a write the disk could not take is cut
    off again (hold the journal lock). A full disk is a DiskFull naming the journal.

    Optuna skips a cut-off last record when it reads, but glues the next one onto it after space
    is freed, and every later read fails. Unbuffered, so no retry of the buffer at close can
    write the bytes again after the cut.
    """
    with open(path, "ab", buffering=0) as journal:
        end = journal.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:  # a write may take part of it, the next one then fails
                view = view[journal.write(view) or 0:]
        except OSError as error:
            os.ftruncate(journal.fileno(), end)  # shrinking needs no space
            full = disk_full(error, path)
            if full is None:
                raise
            raise full from error


class StorageLost(SweepFailed):
    """The RDB storage's database stayed unreachable past OUTAGE_S: the sweep stops (exit 1), and
    the same command resumes it."""


def PatientRDBStorage(url: str, where: str, **kwargs: Any) -> Any:  # noqa: N802 - a class, built on first use
    """Optuna's RDB storage, riding out a database restart (see Outage); `where` names it in messages."""
    global _PatientRDBStorage
    if _PatientRDBStorage is None:
        _PatientRDBStorage = _define_patient_rdb_storage()
    return _PatientRDBStorage(url, where, **kwargs)


_PatientRDBStorage: Any = None
# The RDBStorage methods that open a database session, with the private ones Optuna's cache
# (_CachedStorage, which wraps every RDBStorage a study uses) calls instead of the public ones.
_DATABASE_CALLS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
    "get_study_system_attrs", "get_all_studies", "create_new_trial", "_create_new_trial", "set_trial_param",
    "_set_trial_param", "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial_id_from_study_id_trial_number",
    "get_trial", "get_all_trials", "_get_trials", "get_trial_user_attrs", "get_trial_system_attrs",
    "get_best_trial", "_get_best_trial_id", "record_heartbeat", "_get_stale_trial_ids",
)


def _define_patient_rdb_storage() -> type:
    import optuna

    class PatientRDBStorage(optuna.storages.RDBStorage):
        def __init__(self, url: str, where: str, **kwargs: Any) -> None:
            self._outage = Outage(where)
            super().__init__(url, **kwargs)

    for name in _DATABASE_CALLS:
        setattr(PatientRDBStorage, name, _patient(getattr(optuna.storages.RDBStorage, name)))
    setattr(PatientRDBStorage, "record_heartbeat", _heartbeat(PatientRDBStorage.record_heartbeat))  # noqa: B010
    return PatientRDBStorage


_nested = threading.local()  # per thread: inside a patient call (whose own retries cover the inner ones)


def _patient(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(storage: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_nested, "inside", False):  # create_new_trial -> _create_new_trial: retried once, outside
            return method(storage, *args, **kwargs)
        _nested.inside = True
        try:
            return storage._outage.ride(lambda: method(storage, *args, **kwargs))
        finally:
            _nested.inside = False

    return call


_beaten: set[int] = set()  # the trials whose heartbeat this process has recorded (or tried to)
_beaten_lock = threading.Condition()


def _heartbeat(method: Callable[..., Any]) -> Callable[..., Any]:
    """A heartbeat runs in its own thread: one the database missed is the trial's own calls' to
    report. Each one tells after_first_heartbeat that the trial has had its first."""
    @functools.wraps(method)
    def call(storage: Any, trial_id: int) -> None:
        try:
            method(storage, trial_id)
        except StorageLost:
            pass
        finally:
            with _beaten_lock:
                _beaten.add(trial_id)
                _beaten_lock.notify_all()

    return call


OUTAGE_S = float(os.environ.get("SWEEP_OUTAGE_S", "30"))  # how long a lost database is waited for
OUTAGE_PAUSE_S = (0.1, 1.0)  # the first pause between tries, doubled up to the second


@dataclass
class Outage:
    """How a storage rides out a database restart: a call that lost its connection (or could not
    get one) is tried again, 0.1 s later, then at most every second, for OUTAGE_S; past that it
    raises StorageLost, and later calls try once until one gets through.

    Short pauses matter: a running trial's heartbeat must not stay silent for the grace period
    after the database is back, or another worker fails the live trial.
    """

    where: str  # the storage, its password masked
    limit_s: float = OUTAGE_S
    given_up: bool = False

    def ride(self, call: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + (0 if self.given_up else self.limit_s)
        pause = OUTAGE_PAUSE_S[0]
        while True:
            try:
                result = call()
            except Exception as error:
                lost = _lost_connection(error)
                if lost is None:
                    raise
                if time.monotonic() >= deadline:
                    self.given_up = True
                    raise StorageLost(
                        f"storage {self.where}: its database did not answer for {self.limit_s:g} s"
                        f" ({first_line(lost)}); the finished trials are safe in it: run the same command"
                        " again once it is back.") from None
                time.sleep(pause)
                pause = min(2 * pause, OUTAGE_PAUSE_S[1])
                continue
            self.given_up = False
            return result


def _lost_connection(error: BaseException) -> BaseException | None:
    """The database driver's error behind a lost or refused connection, if that is what this is.

    SQLAlchemy raises OperationalError (InterfaceError for a connection closed under it), and
    Optuna wraps it in StorageInternalError: the chain of causes is searched.
    """
    import sqlalchemy.exc

    for cause in causes(error):
        if isinstance(cause, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)) or (
                isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated):
            return cause.orig if cause.orig is not None else cause
    return None


def storage_lost(error: BaseException) -> StorageLost | None:
    """The StorageLost behind an error, if any: Optuna's _run_trial, telling a trial while the
    storage is gone, raises UnboundLocalError from its `finally` instead (optuna 5.0)."""
    return next((cause for cause in causes(error) if isinstance(cause, StorageLost)), None)

