"""The Optuna side: storages, samplers, pruners, and the study with what it remembers of its sweep.

A study carries its own search space (user attrs), so a worker on another machine samples the
same space, and a changed space, data set or metric is refused on resume.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from typing import Any

from search_space import ConfigError, SweepConfig

# RDB storages: a running trial's worker writes a heartbeat every SWEEP_HEARTBEAT_S seconds, and
# a trial silent for SWEEP_GRACE_S is failed and its params retried (by any worker of the study).
HEARTBEAT_S = int(os.environ.get("SWEEP_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("SWEEP_GRACE_S", "60"))
MAX_RETRIES = 3  # how often a trial of a dead worker is retried
STALE_LOCK_S = 10


def open_storage(spec: str) -> Any:
    """An RDB URL (with heartbeats), a redis:// journal, or else a journal file several processes share."""
    import optuna
    from optuna.storages.journal import JournalRedisBackend

    from tracking import mask_uri

    try:
        if spec.startswith("redis://"):
            return optuna.storages.JournalStorage(JournalRedisBackend(spec))
        if "://" in spec:
            return _with_retries(lambda: optuna.storages.RDBStorage(
                _with_driver(spec), engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRIES),
            ))
        return optuna.storages.JournalStorage(PageCacheJournal(spec))
    except ImportError as error:
        raise ConfigError([f"storage {mask_uri(spec)}: needs the Python package {error.name!r}"
                           " (pip install it into this environment)."]) from None
    except Exception as error:  # SQLAlchemy, redis and OS errors: one cause, the store is unusable
        first = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        raise ConfigError([f"storage {mask_uri(spec)}: cannot be used: {first}"]) from None


def PageCacheJournal(path: str) -> Any:  # noqa: N802 - a class, built on first use (lazy optuna import)
    """Optuna's journal file, written without an fsync per record.

    Optuna fsyncs every record (about 1 ms each, ten records a trial: most of a short trial's
    overhead here). A record is still one write of whole lines under the file lock, so a killed
    process loses nothing (its writes are in the OS's page cache); only an OS crash can lose the
    last records. The file stays a plain journal that the Optuna CLI and optuna-dashboard read.
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

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            lines = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
            self._lock_obj.acquire()
            try:
                with open(self._path, "ab") as journal:
                    journal.write(lines)
            finally:
                self._lock_obj.release()

    return PageCacheJournalBackend


def _with_retries(open_rdb: Any, attempts: int = 5) -> Any:
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


def make_sampler(config: SweepConfig) -> Any:
    import optuna.samplers as samplers

    from search_space import grid

    seed = config.seed
    if config.sampler == "grid":
        return samplers.GridSampler(grid(config), seed=seed)
    return {
        # constant_liar: parallel workers do not propose the point a running trial already has
        "tpe": lambda: samplers.TPESampler(seed=seed, constant_liar=True),
        "random": lambda: samplers.RandomSampler(seed=seed),
        "cmaes": lambda: samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
        "qmc": lambda: samplers.QMCSampler(seed=seed, warn_independent_sampling=False),
    }[config.sampler]()


def make_pruner(config: SweepConfig) -> Any:
    import optuna.pruners as pruners

    return {
        "none": pruners.NopPruner,
        "median": lambda: pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
        "percentile": lambda: pruners.PercentilePruner(25.0, n_startup_trials=5, n_warmup_steps=2),
        "successive_halving": pruners.SuccessiveHalvingPruner,
        "hyperband": pruners.HyperbandPruner,
    }[config.pruner]()


def open_study(config: SweepConfig, storage: Any, data_digest: str) -> Any:
    """Create the study, or load it and refuse a changed space or data."""
    import optuna

    study = optuna.create_study(
        storage=storage, study_name=config.study_name, direction="maximize",
        sampler=make_sampler(config), pruner=make_pruner(config), load_if_exists=True,
    )
    if "sweep.space_sha256" not in study.user_attrs:
        remember = {"sweep.space_sha256": config.space_sha256(), "sweep.data_sha256": data_digest,
                    "sweep.fixed_params": config.fixed, "sweep.config": config.source}
        for key, value in remember.items():
            study.set_user_attr(key, value)
    check_same_sweep(study, config, data_digest)
    return study


def check_same_sweep(study: Any, config: SweepConfig, data_digest: str) -> None:
    attrs = study.user_attrs
    if attrs.get("sweep.space_sha256") != config.space_sha256():
        raise ConfigError([
            f"study {study.study_name!r}: was started with another search space, data or metric;"
            " resume it with the same file or pick a new --study-name."])
    if attrs.get("sweep.data_sha256") != data_digest:
        raise ConfigError([
            f"study {study.study_name!r}: was started on other data (its rows or columns differ);"
            " give it the same data or pick a new --study-name."])


def load_study(storage_spec: str, name: str, wait_s: float = 0) -> Any:
    """An existing sweep's study; wait up to `wait_s` for `sweep run` to create it."""
    from tracking import mask_uri

    deadline = time.monotonic() + wait_s
    while True:
        study = _existing_study(storage_spec, name)
        if study is not None and "sweep.parent_run_id" in study.user_attrs:
            return study
        if time.monotonic() >= deadline:
            raise ConfigError([f"study {name!r}: not found in storage {mask_uri(storage_spec)}"
                               + (f" after waiting {wait_s:g} s." if wait_s else ".")])
        time.sleep(1)


def _existing_study(storage_spec: str, name: str) -> Any:
    import optuna

    if "://" not in storage_spec and not _file_exists(storage_spec):
        return None  # opening a journal file would create it
    storage = open_storage(storage_spec)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def _file_exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_file()


def study_config(study: Any, n_trials: int | None = None) -> SweepConfig:
    """The sweep's config as the study remembers it (what `sweep run` validated)."""
    import search_space

    overrides = {"study_name": study.study_name,
                 "n_trials": n_trials or study.user_attrs.get("sweep.n_trials")}
    return search_space.parse(study.user_attrs["sweep.config"], origin=f"study {study.study_name!r}",
                              overrides=overrides)


def latest_study_name(storage_spec: str) -> str | None:
    """The study created last in the storage, if any."""
    import optuna

    if "://" not in storage_spec and not _file_exists(storage_spec):
        return None
    summaries = optuna.get_all_study_summaries(open_storage(storage_spec), include_best_trial=False)
    summaries = [s for s in summaries if s.datetime_start is not None] or summaries
    if not summaries:
        return None
    return max(summaries, key=lambda s: (s.datetime_start is not None, s.datetime_start or 0)).study_name
