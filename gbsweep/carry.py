"""Continue from another study (`sweep run --from OLD`): the old study's finished trials that fit
the new space, carried into the new study before its first trial.

A trial is carried only when it scored exactly what the new sweep would score for its params:
the same estimator, data, metric, folds and seed, and every estimator param at the same value.
A param the old study did not sample had the value it had then: its fixed value, else the
estimator's default. So a trial fits when each param the new space samples (its `when` holding)
lies in its new range, on its step, or among its new choices; and each param it does not sample
keeps the value the old trial ran with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gbsweep import keys, studies
from gbsweep.errors import ConfigError, mask_uri
from gbsweep.params import estimator_class, holds, is_active, same_value
from gbsweep.search_space import MEASURED

if TYPE_CHECKING:
    from optuna import Study
    from optuna.trial import FrozenTrial

    from gbsweep.search_space import SweepConfig

CARRIED_STATES = ("COMPLETE", "PRUNED")
# the trial's own numbers go with it: its child run in the new study logs them too
CARRIED_ATTRS = (keys.SCORE_STD, keys.FIT_TIME_S, keys.PREDICT_MS, keys.MODEL_BYTES)


def plan(storage_spec: str, config: SweepConfig, data_digest: str) -> tuple[FrozenTrial, ...] | None:
    """The old study's trials to carry, rebuilt for the new space, or None without `from`;
    ConfigError when the old study scored something else (checked before anything is created)."""
    if not config.from_study:
        return None
    name = config.from_study
    if name == config.study_name:
        raise ConfigError([f"from: names this sweep's own study {name!r}; give the new sweep another"
                           " study_name (or --study-name)."])
    old = _old_study(storage_spec, name)
    old_config = studies.study_config(old)
    problems = differences(old_config, old.user_attrs.get(keys.DATA_SHA256), config, data_digest)
    if problems:
        raise ConfigError(problems)
    finished = [t for t in old.get_trials(deepcopy=False) if t.state.name in CARRIED_STATES]
    return tuple(c for t in finished if (c := rebuild(t, old_config, config, name)) is not None)


def _old_study(storage_spec: str, name: str) -> Study:
    try:
        old = studies.load_study(storage_spec, name, attr=keys.CONFIG)
    except ConfigError:
        raise ConfigError([f"from: study {name!r} is not in storage {mask_uri(storage_spec)}"
                           " (a sweep's study, created by `sweep run`)."]) from None
    backend = getattr(old._storage, "_backend", old._storage)  # RDB storages come wrapped in a cache
    engine = getattr(backend, "engine", None)
    if engine is not None:  # pooled connections must not be shared with the processes forked next
        engine.dispose()
    return old


def differences(old: SweepConfig, old_digest: str | None, new: SweepConfig, new_digest: str) -> list[str]:
    """One line per setting that makes the old study's scores not comparable with the new ones."""
    where = f"study {old.study_name!r}"
    problems = [f"{key}: is {now!r} here but was {then!r} in {where}; its trials scored something else."
                for key, then, now in (("estimator", old.estimator, new.estimator), ("metric", old.metric, new.metric),
                                       ("cv", old.cv, new.cv), ("seed", old.seed, new.seed))
                if then != now]
    if old_digest != new_digest or _split(old) != _split(new):
        problems.append(f"data: differs from the data of {where} (its rows or columns); its trials scored"
                        " other data.")
    if problems:
        return problems
    searched = {p.name for p in old.params} | {p.name for p in new.params}
    for name in sorted(set(old.fixed) | set(new.fixed), key=str):
        if name in searched:
            continue  # moved between fixed and params: decided trial by trial
        then, now = _fixed_value(old, name), _fixed_value(new, name)
        if not same_value(then, now):
            problems.append(f"fixed.{name}: is {now!r} here but was {then!r} in {where}; its trials"
                            " scored something else.")
    return problems


def rebuild(trial: FrozenTrial, old: SweepConfig, new: SweepConfig, old_name: str) -> FrozenTrial | None:
    """The old trial as a trial of the new space, or None when it does not fit."""
    import optuna

    ran_with = {**_defaults(old.estimator), **old.fixed, **trial.params}
    params: dict[str, Any] = {}
    distributions: dict[str, Any] = {}
    for param in new.params:
        if not is_active(param, params):
            continue  # not sampled by the new space: checked with the unsampled params below
        value = ran_with.get(param.name)
        if not holds(param, value):
            return None
        params[param.name], distributions[param.name] = value, param.distribution
    would_run_with = {**_defaults(new.estimator), **new.fixed}
    for name in set(ran_with) - set(params):
        if not same_value(ran_with[name], would_run_with.get(name, ran_with[name])):
            return None
    goals = _goals(trial, new)
    if goals is None:
        return None
    values, constraints = goals
    carried = optuna.trial.create_trial(
        state=trial.state, values=values, params=params, distributions=distributions,
        intermediate_values=dict(trial.intermediate_values), constraints=constraints,
        user_attrs={**{k: v for k, v in trial.user_attrs.items() if k in CARRIED_ATTRS},
                    keys.FROM_STUDY: old_name, keys.FROM_TRIAL: trial.number},
    )
    carried.datetime_start, carried.datetime_complete = trial.datetime_start, trial.datetime_complete
    return carried


def _goals(trial: FrozenTrial, new: SweepConfig) -> tuple[list[float] | None, dict[str, float]] | None:
    """The old trial's values and constraint values in the new study: its metric, and its measured
    number as a second objective; None when the new study needs a number the trial lacks (measured
    before `sweep` measured it), or when it was pruned and the new study has two objectives
    (Optuna prunes only single-objective studies)."""
    score = studies.score(trial)
    values = None if score is None else [score]
    if new.trade_off:
        measured = trial.user_attrs.get(MEASURED[new.trade_off])
        if trial.state.name != "COMPLETE" or score is None or measured is None:
            return None
        values = [score, measured]
    constraints = new.constraint_values(trial.user_attrs) if new.constraints else {}
    return None if constraints is None else (values, constraints)


def carry(study: Study, planned: tuple[FrozenTrial, ...]) -> None:
    """Add the planned trials the study lacks (so a crash halfway is mended by the next run)."""
    have = {t.user_attrs.get(keys.FROM_TRIAL) for t in study.get_trials(deepcopy=False)}
    study.add_trials([t for t in planned if t.user_attrs[keys.FROM_TRIAL] not in have])


def carried_count(study: Study) -> int:
    return sum(keys.FROM_TRIAL in t.user_attrs for t in study.get_trials(deepcopy=False))


def _split(config: SweepConfig) -> dict[str, Any]:
    """How the data was taken and split, but not where the file lay (the digest checks its content)."""
    return {k: v for k, v in config.data.__dict__.items() if k != "path"}


def _fixed_value(config: SweepConfig, name: str) -> Any:
    return config.fixed[name] if name in config.fixed else _defaults(config.estimator).get(name)


def _defaults(estimator: str) -> dict[str, Any]:
    return estimator_class(estimator)().get_params()
