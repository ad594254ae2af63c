"""The Optuna side: samplers, pruners, which study a command means, and the study with what it
remembers of its sweep (its best params, its trials as rows).

A study carries its own search space (user attrs), so a worker on another machine samples the
same space, and a changed space, data set or metric is refused on resume.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from gbsweep import keys, storages
from gbsweep.errors import ConfigError, SweepFailed, mask_uri
from gbsweep.search_space import MEASURED, SweepConfig, without_early_stop

if TYPE_CHECKING:
    from optuna import Study
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial


def make_sampler(config: SweepConfig, seed: int | None = None) -> BaseSampler:
    """The config's sampler, seeded with its seed unless told another (a worker's own). Every
    sampler reads the trials' constraints (Optuna's Trial.set_constraint); TPE learns from them."""
    import optuna.samplers as samplers

    from gbsweep.search_space import grid

    seed = config.seed if seed is None else seed
    if config.sampler == "grid":
        return samplers.GridSampler(grid(config), seed=seed)
    return {
        "tpe": lambda: _tpe(seed),
        "random": lambda: samplers.RandomSampler(seed=seed),
        "cmaes": lambda: samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
        "qmc": lambda: samplers.QMCSampler(seed=seed, warn_independent_sampling=False),
    }[config.sampler]()


def _tpe(seed: int) -> BaseSampler:
    """TPE as `sweep` runs it: multivariate (it models how the params act together, where the
    default models each alone), grouped so a conditional param is modelled with the trials that
    sampled it, and constant_liar so parallel workers do not propose the point a running trial
    already has. Optuna marks the first two experimental; their warnings are not the user's."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def make_pruner(config: SweepConfig) -> BasePruner:
    import optuna.pruners as pruners

    return {
        "none": pruners.NopPruner,
        "median": lambda: pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
        "percentile": lambda: pruners.PercentilePruner(25.0, n_startup_trials=5, n_warmup_steps=2),
        "successive_halving": pruners.SuccessiveHalvingPruner,
        "hyperband": pruners.HyperbandPruner,
    }[config.pruner]()


def join(study: Study, config: SweepConfig) -> Study:
    """A loaded study with the sweep's own sampler and pruner (Optuna's load_study gives its
    defaults): a worker samples as `sweep run` does, with a seed of its own, since two workers
    on one seed would draw the same start-up points."""
    study.sampler = make_sampler(config, seed=(config.seed + int.from_bytes(os.urandom(4), "little")) % 2**32)
    study.pruner = make_pruner(config)
    return study


def open_study(config: SweepConfig, storage: BaseStorage, data_digest: str,
               when_new: Callable[[Study], None] | None = None) -> Study:
    """Create the study, or load it and refuse a changed space or data.

    `when_new(study)` runs on a new study before it is marked ready (its config attr, which
    workers wait for), e.g. to add the trials it continues with; again on the next run if it
    did not get that far."""
    import optuna

    study = optuna.create_study(
        storage=storage, study_name=config.study_name, directions=config.directions,
        sampler=make_sampler(config), pruner=make_pruner(config), load_if_exists=True,
    )
    if keys.CONFIG not in study.user_attrs:  # set last: a sweep killed before it sets them all again
        if when_new is not None:
            when_new(study)
        else:
            start_cheap(study, config)
        continued = {keys.FROM_STUDY: config.from_study} if config.from_study else {}
        remember = {keys.SPACE_SHA256: config.space_sha256(), keys.DATA_SHA256: data_digest,
                    keys.FIXED_PARAMS: config.fixed, **continued, keys.CONFIG: config.source}
        for key, value in remember.items():
            study.set_user_attr(key, value)
    check_same_sweep(study, config, data_digest)
    return study


def start_cheap(study: Study, config: SweepConfig) -> None:
    """TPE's first trial is the estimator's own defaults where the space holds them (FLAML's cheap
    start: a model of default size, usually strong): the sweep has a good incumbent after one
    ordinary trial instead of after TPE's random start-up. Other samplers draw as documented."""
    from gbsweep.params import default_point

    point = default_point(config.estimator, config.params) if config.sampler == "tpe" else {}
    if point:
        study.enqueue_trial(point, user_attrs={keys.CHEAP_START: True}, skip_if_exists=True)


def check_same_sweep(study: Study, config: SweepConfig, data_digest: str) -> None:
    attrs = study.user_attrs
    if attrs.get(keys.SPACE_SHA256) != config.space_sha256():
        if config.early_stop_params and attrs.get(keys.SPACE_SHA256) == without_early_stop(config).space_sha256():
            raise ConfigError([
                f"study {study.study_name!r}: ran without the estimator's early stop; resume it with"
                " `early_stop: false` (the default), or pick a new --study-name."])
        raise ConfigError([
            f"study {study.study_name!r}: was started with another search space, data or metric;"
            " resume it with the same file or pick a new --study-name."])
    if attrs.get(keys.DATA_SHA256) != data_digest:
        raise ConfigError([
            f"study {study.study_name!r}: was started on other data (its rows or columns differ);"
            " give it the same data or pick a new --study-name."])
    if config.from_study and attrs.get(keys.FROM_STUDY) != config.from_study:
        raise ConfigError([
            f"study {study.study_name!r}: exists already, and was not continued from {config.from_study!r};"
            " pick a new --study-name to continue from it."])


LOAD_POLL_S = 0.1  # how often a waiting worker looks for the study: it starts as soon as it is there


def load_study(storage_spec: str, name: str, wait_s: float = 0, attr: str = keys.PARENT_RUN_ID) -> Study:
    """An existing sweep's study, once it has `attr`; wait up to `wait_s` for `sweep run` to create it."""
    deadline = time.monotonic() + wait_s
    storage = None
    while True:
        if storage is None and ("://" in storage_spec or _file_exists(storage_spec)):
            storage = storages.open_storage(storage_spec)  # once: a journal file is not created by looking
        study = _existing_study(storage, name) if storage is not None else None
        if study is not None and attr in study.user_attrs:
            return study
        if time.monotonic() >= deadline:
            raise ConfigError([f"study {name!r}: not found in storage {mask_uri(storage_spec)}"
                               + (f" after waiting {wait_s:g} s." if wait_s else ".")])
        time.sleep(LOAD_POLL_S)


def _existing_study(storage: BaseStorage, name: str) -> Study | None:
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def _file_exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_file()


def study_config(study: Study) -> SweepConfig:
    """The sweep's config as the study remembers it (what `sweep run` validated)."""
    from gbsweep import search_space

    overrides = {"study_name": study.study_name, "n_trials": study.user_attrs.get(keys.N_TRIALS),
                 "from": study.user_attrs.get(keys.FROM_STUDY)}
    config = search_space.parse(study.user_attrs[keys.CONFIG], origin=f"study {study.study_name!r}",
                                overrides=overrides)
    # The fixed params it ran with: its early stop was decided on its data (with_early_stop), and
    # the study of a sweep that had no early stop yet ran without one.
    added = {k: v for k, v in study.user_attrs.get(keys.FIXED_PARAMS, {}).items() if k not in config.fixed}
    return replace(config, fixed={**added, **config.fixed}, early_stop_params=added)


def pick_study_name(storage_spec: str, named: str | None, default: str) -> tuple[str, bool]:
    """Which study a command means, and whether it is the storage's latest (one policy for all).

    `named`: --study-name, else the study_name of the config file the user gave (--config or
    ./search_space.yaml); that one, found or not. Else `default` (the shipped file's study_name,
    what a bare `sweep run` runs) when the storage holds it; else the study started last there.
    """
    if named:
        return named, False
    summaries = _summaries(storage_spec)
    if any(s.study_name == default for s in summaries):
        return default, False
    if not summaries:
        raise ConfigError([f"storage {mask_uri(storage_spec)}: holds no study; run `sweep run` first"
                           " or name the sweep's storage with --storage."])
    started = [s for s in summaries if s.datetime_start is not None] or summaries
    return max(started, key=lambda s: (s.datetime_start is not None, s.datetime_start or 0)).study_name, True


def _summaries(storage_spec: str) -> list:
    import optuna

    if "://" not in storage_spec and not _file_exists(storage_spec):
        return []  # opening a journal file would create it
    return optuna.get_all_study_summaries(storages.open_storage(storage_spec), include_best_trial=False)


def maximizes(study: Study) -> bool:
    """Whether the metric (the first objective) is maximized."""
    return study.directions[0].name == "MAXIMIZE"


def score(trial: FrozenTrial) -> float | None:
    """The trial's metric: its value, the first of its values in a two-objective study."""
    return trial.values[0] if trial.values else None


def trials_as_sampled(study: Study) -> list[FrozenTrial]:
    """All the study's trials, by number, as its sampler reads them for the trial just asked: one
    read per trial that both share (Optuna's per-trial cache, the one its samplers use), where each
    read costs a round trip per table on a storage far away."""
    return study._get_trials(deepcopy=False, use_cache=True)


def feasible(trial: FrozenTrial) -> bool:
    """Within every constraint (Optuna's rule: each constraint value <= 0); a trial of a study
    without constraints has none, and is."""
    return all(value <= 0 for value in trial.constraints.values())


def candidate(trial: FrozenTrial) -> float | None:
    """The trial's metric when it may be the best trial: completed and within the constraints."""
    return score(trial) if trial.state.name == "COMPLETE" and feasible(trial) else None


def feasible_trials(study: Study) -> list[FrozenTrial]:
    """The completed trials within the constraints (all of them in a study without any)."""
    return [t for t in study.get_trials(deepcopy=False, states=(_complete(),)) if candidate(t) is not None]


def pareto_front(study: Study) -> list[FrozenTrial]:
    """The completed trials within the constraints that no other such trial beats on one objective
    without losing on the other (Optuna's best_trials), best metric first."""
    return sorted(study.best_trials, key=lambda t: (-t.values[0], t.number))


def best_trial(study: Study) -> FrozenTrial | None:
    """The trial a sweep exports and promotes: the best completed trial within the constraints.
    With two objectives, the front's member with the best metric, or, with `select: {within: x}`,
    the one with the lowest second objective among the members whose metric lies within x of the
    front's best. None when no completed trial is within the constraints."""
    if len(study.directions) == 1:
        try:
            return study.best_trial  # Optuna's: it skips the trials past a constraint
        except ValueError:
            return None
    front = pareto_front(study)
    if not front:
        return None
    top = max(t.values[0] for t in front)
    within = study_config(study).select_within or 0.0
    near = [t for t in front if t.values[0] >= top - within]
    return min(near, key=lambda t: (t.values[1], -t.values[0], t.number))


def best_so_far(study: Study) -> list[tuple[int, float]]:
    """(trial number, the best metric up to it) at each completed trial within the constraints that
    raised it (the study maximizes the metric)."""
    best, history = None, []
    for trial in study.get_trials(deepcopy=False, states=(_complete(),)):
        value = candidate(trial)
        if value is not None and (best is None or value > best):
            best = value
            history.append((trial.number, float(value)))
    return history


def best_value(study: Study) -> float | None:
    best = best_trial(study)
    return None if best is None else score(best)


def export(study: Study, trial: FrozenTrial) -> dict:
    """A trial with the tuned plus the fixed params, ready for Estimator(**params), and the numbers
    it measured of its model."""
    fixed = study.user_attrs.get(keys.FIXED_PARAMS, {})
    measured = {name: trial.user_attrs[key] for name, key in MEASURED.items() if key in trial.user_attrs}
    return {"study": study.study_name, "trial": trial.number, "value": score(trial), **measured,
            "params": {**fixed, **trial.params}}


def best_export(study: Study) -> dict:
    """export() of the best trial; SweepFailed when there is none, saying why."""
    best = best_trial(study)
    if best is not None:
        return export(study, best)
    completed = study.get_trials(deepcopy=False, states=(_complete(),))
    if not completed:
        raise SweepFailed(f"study {study.study_name!r} has no completed trial yet.")
    limits = study_config(study).limits_text()
    raise SweepFailed(f"study {study.study_name!r}: none of its {len(completed)} completed trials meets the"
                      f" constraints ({limits}); nothing is exported or promoted.")


def _complete() -> Any:
    from optuna.trial import TrialState

    return TrialState.COMPLETE


def trees_saved(trial: FrozenTrial) -> tuple[float, float, float]:
    """(trees grown, trees asked, seconds of fitting saved) of a finished trial, per fold: what its
    early stop and its pruning did not grow, the seconds at the trial's own pace per tree."""
    grown, asked = trial.user_attrs.get(keys.TREES), trial.user_attrs.get(keys.TREES_ASKED)
    if not grown or not asked:
        return 0.0, 0.0, 0.0
    fit_s = trial.user_attrs.get(keys.FIT_TIME_S) or 0.0
    return float(grown), float(asked), fit_s * max(0.0, asked - grown) / grown


def is_surplus(trial: FrozenTrial) -> bool:
    """A trial refused a slot (other workers' trials filled the total): failed, but it counts
    nowhere: not against max_failures, not in the progress line, and it gets no child run."""
    return bool(trial.user_attrs.get(keys.SURPLUS))


def trial_row(trial: FrozenTrial) -> dict:
    """number, state, value, params (the active ones), what it measured, whether it was within
    the constraints (None without any), duration_s, run_id: one row, one JSON line."""
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    measured = {name: trial.user_attrs.get(key) for name, key in MEASURED.items()}
    return {"number": trial.number, "state": trial.state.name, "value": score(trial),
            "params": dict(trial.params), "trees": trial.user_attrs.get(keys.TREES), **measured,
            "feasible": feasible(trial) if trial.constraints else None, "duration_s": duration,
            "run_id": trial.user_attrs.get(keys.RUN_ID)}
