"""Optuna's RDB storage, riding out a database restart: a call that loses its connection is tried
again for a while (OUTAGE_S), and past that the sweep stops with one line saying to run the same
command again (StorageLost).

Every RDB storage of a sweep is one of these (studies.open_storage), so `sweep run`, each
`sweep worker`, their trials' heartbeats and the recorder ride out the same restart the same way.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gbsweep.errors import SweepFailed, causes, first_line


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
    # A heartbeat runs in its own thread: one the database missed is the trial's own calls' to report.
    setattr(PatientRDBStorage, "record_heartbeat", _quietly(PatientRDBStorage.record_heartbeat))  # noqa: B010
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


def _quietly(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except StorageLost:
            return None

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

