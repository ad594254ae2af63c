"""Load and validate search_space.yaml into a frozen SweepConfig (the top-level keys, the data,
the YAML read safely); sample it with suggest(config, trial). The searched params: params.py.

Every problem is collected and raised once as a ConfigError, one line per problem:
``<key path>: <what must hold>. Got <value> instead.``
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from gbsweep import keys, params
from gbsweep.errors import ConfigError, first_line
from gbsweep.params import (
    Param,
    check_estimator_params,
    check_grid,
    check_params,
    choice_problem,
    early_stop_params,
    is_number,
    key_name,
    unknown_keys,
)

if TYPE_CHECKING:
    from optuna import Trial

ESTIMATORS = (
    "GradientBoostingClassifier",
    "GradientBoostingRegressor",
    "HistGradientBoostingClassifier",
    "HistGradientBoostingRegressor",
)
SAMPLERS = ("tpe", "random", "cmaes", "qmc", "grid")
PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband")
TOP_KEYS = (
    "experiment", "study_name", "model_name", "estimator", "data", "metric", "cv", "seed",
    "sampler", "pruner", "n_trials", "timeout", "max_failures", "fixed", "params", "from",
    "constraints", "select", "early_stop", "plateau",
)
DATA_KEYS = ("dataset", "path", "target", "drop", "holdout", "options")
BUNDLED = (
    "breast_cancer", "wine", "iris", "digits", "diabetes", "make_classification", "make_regression",
)
SYNTHETIC_OPTIONS = ("n_samples", "n_features", "n_informative", "n_classes", "noise")
DEFAULTS: dict[str, Any] = {
    "experiment": "sweep", "study_name": None, "model_name": None, "cv": 5, "seed": 42,
    "sampler": "tpe", "pruner": "none", "n_trials": 20, "timeout": None, "max_failures": 10,
    "fixed": {}, "from": None, "constraints": {}, "select": None, "early_stop": False,
    "plateau": {"patience": 50, "min_delta": 0.0001},
}
PLATEAU_KEYS = ("patience", "min_delta")
# `early_stop: auto` is on when a fold's training part has this many rows: the 10% it holds out to
# decide the stop are then 200 rows or more. On fewer (breast_cancer's folds: 300 rows, 30 held
# out) the stop was noise: a median 0.002 of roc_auc lost over 6 configurations. It is off by
# default: on the anytime bench's fit workload (3,300 rows a fold) it saved 27% of the fitting
# time of 14 random trials but cost a median 0.0011 of roc_auc, 0.017 on one of the five best.
EARLY_STOP_ROWS = 2000
# What each trial measures of its first fold's model, by the name a user writes: a constraint
# (`constraints: {predict_ms: {max: 2}}`) or a second objective (`metric: [roc_auc, predict_ms]`)
# names these, and both are minimized. Their trial user attrs:
MEASURED = {"predict_ms": keys.PREDICT_MS, "model_bytes": keys.MODEL_BYTES}
SELECT_KEYS = ("within",)
MAX_SEED = 2**32 - 1  # numpy's RandomState, behind the samplers and the splits, takes no more


@dataclass(frozen=True)
class DataConfig:
    dataset: str | None = None
    path: str | None = None
    target: str | None = None
    drop: tuple[str, ...] = ()
    holdout: float = 0.2
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.dataset or Path(self.path or "").name


@dataclass(frozen=True)
class SweepConfig:
    experiment: str
    study_name: str
    model_name: str
    estimator: str
    data: DataConfig
    metric: str
    cv: int
    seed: int
    sampler: str
    pruner: str
    n_trials: int
    timeout: float | None
    max_failures: int
    fixed: dict
    params: tuple[Param, ...]
    source: str = ""  # the YAML text as given
    from_study: str | None = None  # `from:`: the study whose fitting trials a new study starts with
    constraints: dict[str, float] = field(default_factory=dict)  # a MEASURED name: its max
    trade_off: str | None = None  # a MEASURED name, minimized as the second objective
    select_within: float | None = None  # `select: {within: x}`: see select_from_front
    early_stop: str | bool = False  # the `early_stop:` key; see with_early_stop
    early_stop_params: dict = field(default_factory=dict)  # the part of `fixed` it added (when in effect)
    patience: int | None = None  # `plateau:` counted trials without a gain > min_delta that end the study
    min_delta: float = 0.0

    @property
    def directions(self) -> list[Literal["maximize", "minimize"]]:
        """The study's objectives: the metric (scikit-learn scorers are greater-is-better), then
        the trade-off, when there is one."""
        return ["maximize", "minimize"] if self.trade_off else ["maximize"]

    def objectives(self) -> list[str]:
        return [self.metric] + ([self.trade_off] if self.trade_off else [])

    def constraint_values(self, measured: dict[str, Any]) -> dict[str, float] | None:
        """Optuna's constraint per limit (feasible when <= 0): how far the trial's number lies past
        the limit, as a fraction of it (so the milliseconds and the bytes weigh alike); None when a
        number was not measured."""
        values: dict[str, Any] = {name: measured.get(MEASURED[name]) for name in self.constraints}
        if any(not is_number(v) for v in values.values()):
            return None
        return {name: float(v) / self.constraints[name] - 1.0 for name, v in values.items()}

    def limits_text(self) -> str:
        return ", ".join(f"{name} <= {limit:g}" for name, limit in self.constraints.items())

    def fold_rows(self, train_rows: int) -> int:
        """The rows a fold trains on, of a training part of `train_rows`."""
        return train_rows * (self.cv - 1) // self.cv

    @property
    def is_classifier(self) -> bool:
        return self.estimator.endswith("Classifier")

    def space_sha256(self) -> str:
        """What a resumed study must share with the one it resumes."""
        identity = {
            "estimator": self.estimator, "data": self.data.__dict__, "metric": self.metric,
            "cv": self.cv, "seed": self.seed, "fixed": self.fixed,
            "params": [[p.name, repr(p.distribution), p.when] for p in self.params],
        }
        # only when set: the studies of earlier versions, which had neither, resume as they were
        goals = {"constraints": self.constraints, "trade_off": self.trade_off, "select_within": self.select_within}
        identity.update({k: v for k, v in goals.items() if v})
        text = json.dumps(_json_keys(identity), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def settings(self) -> dict[str, Any]:
        """The study settings logged as the parent run's params."""
        settings = {
            "estimator": self.estimator, "dataset": self.data.label, "metric": self.metric,
            "cv_folds": self.cv, "seed": self.seed, "sampler": self.sampler, "pruner": self.pruner,
            "n_trials": self.n_trials, "holdout": self.data.holdout, "early_stop": bool(self.early_stop_params),
            "plateau_patience": self.patience, "plateau_min_delta": self.min_delta,
        }
        settings.update({f"fixed.{k}": v for k, v in self.fixed.items()})
        settings.update({f"max_{k}": v for k, v in self.constraints.items()})
        if self.trade_off:
            settings.update(trade_off=self.trade_off, select_within=self.select_within)
        return settings


def _json_keys(value: Any) -> Any:
    """Every mapping key as the string JSON makes of it, so sort_keys can order keys of mixed types
    (a fixed `class_weight: {0: 1, a: 2}`); keys that are strings already are unchanged."""
    if isinstance(value, dict):
        return {k if isinstance(k, str) else json.dumps(k, default=str): _json_keys(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_keys(v) for v in value]
    return value


def load(path: str | Path, overrides: dict | None = None) -> SweepConfig:
    """Read and validate a search-space file; raise ConfigError listing every problem.

    `overrides` (command-line options) replace the file's top-level keys before validation.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError([f"{path}: cannot be read ({error.strerror or error})."]) from None
    return parse(text, origin=str(path), overrides=overrides)


def parse(text: str, origin: str = "<config>", overrides: dict | None = None) -> SweepConfig:
    raw = _safe_load(text, origin)
    if _holds_itself(raw):
        problem = "must not hold a value inside itself (a YAML alias within its own anchor)"
        raise ConfigError([f"{origin}: {problem}."])
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{origin}: must be a mapping of keys. Got {type(raw).__name__} instead."])
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return _build(raw, text)
    except RecursionError:  # repr() of a value nested almost as deep as the loader allows
        raise ConfigError([f"{origin}: is not valid YAML: it is nested too deeply."]) from None


class _SafeUniqueLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (it keeps the last silently,
    so a second `params:` block would quietly replace the first)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` may be overridden by the keys beside it
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the base class says so with its position
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 reads `5e6` (no dot) as a string; YAML 1.2, JSON and Python read it as a number.
_SafeUniqueLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _safe_load(text: str, origin: str) -> Any:
    """The YAML as plain values; anything the safe loader cannot build is one ConfigError line."""
    try:
        return yaml.load(text, Loader=_SafeUniqueLoader)  # a SafeLoader subclass: plain values only
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError([f"{origin}: is not valid YAML{where}: {problem.rstrip('.')}."]) from None
    except RecursionError:
        raise ConfigError([f"{origin}: is not valid YAML: it is nested too deeply."]) from None
    except Exception as error:  # noqa: BLE001
        # PyYAML's scalar constructors raise plain ValueError/AttributeError/... on values such as
        # `2024-13-45`, `!!int x` or an integer of more than 4300 digits, not a YAMLError.
        raise ConfigError([f"{origin}: is not valid YAML: a value cannot be built"
                           f" ({first_line(error, None)})."]) from None


def _holds_itself(root: Any) -> bool:
    """True for a cycle such as `a: &x [*x]`, which no check below could walk through.

    A depth-first walk with its own stack (the YAML may nest as deep as the loader allows) that
    enters each list or mapping once, however many aliases share it.
    """
    open_, done = set(), set()  # ids of the containers on the current path / walked through
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        value, leaving = stack.pop()
        if not isinstance(value, (dict, list)) or id(value) in done:
            continue
        if leaving:
            open_.discard(id(value))
            done.add(id(value))
            continue
        if id(value) in open_:
            return True
        open_.add(id(value))
        stack.append((value, True))
        stack += [(child, False) for child in (value.values() if isinstance(value, dict) else value)]
    return False


def _build(raw: dict, text: str) -> SweepConfig:
    problems: list[str] = []
    problems += unknown_keys(raw, TOP_KEYS, "")
    values: dict[str, Any] = {**DEFAULTS, **{k: v for k, v in raw.items() if k in TOP_KEYS}}
    experiment = _check_name(values, "experiment", problems) or ""  # "" only with a problem
    study_name = _check_name(values, "study_name", problems, optional=True)
    from_study = _check_name(values, "from", problems, optional=True)
    model_name = _check_name(values, "model_name", problems, optional=True)
    estimator: Any = values.get("estimator")
    if estimator not in ESTIMATORS:
        problems.append(choice_problem("estimator", estimator, ESTIMATORS))
        estimator = None
    data = _check_data(raw.get("data"), problems)
    metric, trade_off = _check_metric(values.get("metric"), problems)
    constraints = _check_constraints(values.get("constraints"), problems)
    select_within = _check_select(values.get("select"), trade_off, problems)
    cv = _check_int(values, "cv", 2, problems)
    seed = _check_int(values, "seed", 0, problems, maximum=MAX_SEED)
    n_trials = _check_int(values, "n_trials", 1, problems)
    max_failures = _check_int(values, "max_failures", 0, problems)
    timeout: Any = values.get("timeout")
    if timeout is not None and (not is_number(timeout) or timeout <= 0):
        problems.append(f"timeout: must be a number of seconds > 0 or null. Got {timeout!r} instead.")
    sampler: Any = values.get("sampler")
    pruner: Any = values.get("pruner")
    if sampler not in SAMPLERS:
        problems.append(choice_problem("sampler", sampler, SAMPLERS))
    if pruner not in PRUNERS:
        problems.append(choice_problem("pruner", pruner, PRUNERS))
    fixed = values.get("fixed") or {}
    if not isinstance(fixed, dict):
        problems.append(f"fixed: must be a mapping of estimator params. Got {fixed!r} instead.")
        fixed = {}
    searched = check_params(raw.get("params"), problems)
    if estimator:
        problems += check_estimator_params(estimator, fixed, searched)
    early_stop: Any = values.get("early_stop")
    if not (early_stop == "auto" or isinstance(early_stop, bool)):
        problems.append(f"early_stop: must be auto, true or false. Got {early_stop!r} instead.")
    patience, min_delta = _check_plateau(values.get("plateau"), problems)
    if trade_off and pruner not in (None, "none"):  # Optuna prunes single-objective studies only
        problems.append(f"pruner: must be none with two objectives (metric: [{metric}, {trade_off}])."
                        f" Got {pruner!r} instead.")
    if trade_off and sampler == "cmaes":
        problems.append("sampler: cmaes optimizes one objective; with two use tpe, random, qmc or grid.")
    if sampler == "grid":
        problems += check_grid(searched)
        if from_study:  # Optuna's GridSampler knows only the points it drew itself
            problems.append("from: cannot be used with sampler grid, which would run the carried trials' points"
                            " again; continue with another sampler, or run the grid as a new study.")
    problems += _check_model_name(model_name, experiment)
    if problems:
        raise ConfigError(problems)
    study_name = study_name or f"{experiment}-{data.label}"
    return SweepConfig(
        experiment=experiment, study_name=study_name, model_name=model_name or experiment,
        estimator=estimator, data=data, metric=metric, cv=cv, seed=seed, sampler=sampler,
        pruner=pruner, n_trials=n_trials, timeout=timeout, max_failures=max_failures,
        fixed=dict(fixed), params=tuple(searched), source=text, from_study=from_study,
        constraints=constraints, trade_off=trade_off, select_within=select_within,
        early_stop=early_stop, patience=patience, min_delta=min_delta,
    )


def with_early_stop(config: SweepConfig, train_rows: int) -> SweepConfig:
    """The config whose fixed params hold the estimator's own early stop (params.EARLY_STOP) when
    it is on: `true`, or `auto` with folds of EARLY_STOP_ROWS training rows or more; the user's own
    fixed or searched values of those params win. Decided once the data is loaded (`sweep run`);
    the study keeps the fixed params it ran with (studies.study_config)."""
    if config.early_stop is False or (config.early_stop == "auto" and config.fold_rows(train_rows) < EARLY_STOP_ROWS):
        return config
    taken = set(config.fixed) | {p.name for p in config.params}
    added = {k: v for k, v in early_stop_params(config.estimator).items() if k not in taken}
    return replace(config, fixed={**added, **config.fixed}, early_stop_params=added)


def without_early_stop(config: SweepConfig) -> SweepConfig:
    fixed = {k: v for k, v in config.fixed.items() if k not in config.early_stop_params}
    return replace(config, fixed=fixed, early_stop_params={})


def _check_plateau(raw: Any, problems: list[str]) -> tuple[int | None, float]:
    """`plateau: {patience: 50, min_delta: 0.0001}`, or null for a study that never stops itself."""
    if raw is None:
        return None, 0.0
    shape = "must be {patience: <an integer >= 1>, min_delta: <a number >= 0>} or null"
    if not isinstance(raw, dict):
        problems.append(f"plateau: {shape}. Got {raw!r} instead.")
        return None, 0.0
    problems += unknown_keys(raw, PLATEAU_KEYS, "plateau.")
    patience: Any = raw.get("patience", DEFAULTS["plateau"]["patience"])
    min_delta: Any = raw.get("min_delta", DEFAULTS["plateau"]["min_delta"])
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        problems.append(f"plateau.patience: must be an integer >= 1. Got {patience!r} instead.")
        patience = None
    if not is_number(min_delta) or min_delta < 0:
        problems.append(f"plateau.min_delta: must be a number >= 0. Got {min_delta!r} instead.")
        min_delta = 0.0
    return patience, float(min_delta)


def _check_metric(metric: Any, problems: list[str]) -> tuple[str, str | None]:
    """`roc_auc`, or two objectives: `[roc_auc, predict_ms]` (the scorer, then a MEASURED number)."""
    if isinstance(metric, list) and len(metric) == 2 and isinstance(metric[0], str) and metric[0]:
        if metric[1] in MEASURED:
            return metric[0], metric[1]
        problems.append(f"metric[1]: the second objective must be one of {', '.join(MEASURED)}"
                        f" (minimized). Got {metric[1]!r} instead.")
        return metric[0], None
    if not isinstance(metric, str) or not metric:
        problems.append("metric: must be a scikit-learn scorer name, or a list of it and one of"
                        f" {', '.join(MEASURED)}. Got {metric!r} instead.")
        return "", None
    return metric, None


def _check_constraints(raw: Any, problems: list[str]) -> dict[str, float]:
    """`{predict_ms: {max: 2.0}, model_bytes: {max: 5e6}}`: a limit > 0 on each MEASURED name given."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"constraints: must be a mapping such as {{predict_ms: {{max: 2.0}}}}. Got {raw!r} instead.")
        return {}
    problems += unknown_keys(raw, tuple(MEASURED), "constraints.")
    limits = {}
    for name in (n for n in MEASURED if n in raw):
        rule = raw[name]
        limit: Any = rule.get("max") if isinstance(rule, dict) else None
        if not isinstance(rule, dict) or set(rule) != {"max"} or not is_number(limit) or limit <= 0:
            problems.append(f"constraints.{name}: must be {{max: <a number > 0>}}. Got {rule!r} instead.")
            continue
        limits[name] = float(limit)
    return limits


def _check_select(raw: Any, trade_off: str | None, problems: list[str]) -> float | None:
    """`select: {within: 0.005}` picks the champion from a two-objective study's front."""
    if raw is None:
        return None
    if not trade_off:
        problems.append("select: applies only with two objectives (metric: [<scorer>, predict_ms or model_bytes]).")
        return None
    within: Any = raw.get("within") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or set(raw) != {"within"} or not is_number(within) or within < 0:
        problems.append(f"select: must be {{within: <a number >= 0>}}. Got {raw!r} instead.")
        return None
    return float(within)


def _check_int(values: dict, key: str, minimum: int, problems: list[str], maximum: int | None = None) -> int:
    value: Any = values.get(key)
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if not is_int or value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        problems.append(f"{key}: must be an integer >= {minimum}{upper}. Got {value!r} instead.")
        return minimum
    return value


def _check_model_name(model_name: str | None, experiment: str | None) -> list[str]:
    """MLflow's registry refuses these names, and it would only say so after the whole sweep."""
    name = model_name or experiment
    if name is None or not (set(name) & {"/", ":"} or name.strip() in (".", "..")):
        return []
    given = "" if model_name else " (the experiment's name, the default); set model_name"
    return [f"model_name: must not contain '/' or ':' nor be '.' or '..'{given}. Got {name!r} instead."]


def _check_name(values: dict, key: str, problems: list[str], optional: bool = False) -> str | None:
    value = values.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 250:
        problems.append(f"{key}: must be a non-empty name of at most 250 characters. Got {value!r} instead.")
        return None
    return value


def _check_data(raw: Any, problems: list[str]) -> DataConfig:
    if not isinstance(raw, dict):
        problems.append(f"data: must be a mapping with 'dataset' or 'path'. Got {raw!r} instead.")
        return DataConfig()
    problems += unknown_keys(raw, DATA_KEYS, "data.")
    dataset, path, target = raw.get("dataset"), raw.get("path"), raw.get("target")
    if (dataset is None) == (path is None):
        problems.append("data: must have exactly one of 'dataset' or 'path'."
                        f" Got {sorted(k for k in ('dataset', 'path') if k in raw)} instead.")
    if dataset is not None and dataset not in BUNDLED:
        problems.append(choice_problem("data.dataset", dataset, tuple(BUNDLED)))
    if path is not None and not (isinstance(path, str) and path):
        problems.append(f"data.path: must be a CSV or Parquet file path. Got {path!r} instead.")
    if path is not None and not isinstance(target, str):
        problems.append(f"data.target: must name the target column when data.path is set. Got {target!r} instead.")
    if dataset is not None and path is None:
        problems += [f"data.{key}: applies only with data.path (a bundled dataset has its own target)."
                     f" Got {raw[key]!r} instead." for key in ("target", "drop") if raw.get(key) is not None]
    drop = raw.get("drop") or []
    if not isinstance(drop, list) or not all(isinstance(c, str) for c in drop):
        problems.append(f"data.drop: must be a list of column names. Got {drop!r} instead.")
        drop = []
    holdout = raw.get("holdout", 0.2)
    if not is_number(holdout) or not 0 < holdout < 1:
        problems.append(f"data.holdout: must be a fraction > 0 and < 1. Got {holdout!r} instead.")
    options = raw.get("options") or {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        problems.append(f"data.options: must be a mapping of generator arguments. Got {options!r} instead.")
        options = {}
    problems += _check_options(dataset, options)
    return DataConfig(dataset=dataset, path=path, target=target, drop=tuple(drop),
                      holdout=holdout, options=dict(options))


def _check_options(dataset: Any, options: dict) -> list[str]:
    """Only the synthetic generators take options, and only the ones listed."""
    if not options or dataset not in BUNDLED:
        return []
    if not dataset.startswith("make_"):
        return [f"data.options: only synthetic datasets take options, not {dataset}."]
    return [f"data.options.{key_name(k)}: is not an option of {dataset}; known: {', '.join(SYNTHETIC_OPTIONS)}."
            for k in sorted(set(options) - set(SYNTHETIC_OPTIONS))]


def suggest(config: SweepConfig, trial: Trial) -> dict[str, Any]:
    """Sample the active params of one trial (params.suggest on the config's params)."""
    return params.suggest(config.params, trial)


def grid(config: SweepConfig) -> dict[str, list]:
    """The grid sampler's search space: every value of every param."""
    return params.grid(config.params)
