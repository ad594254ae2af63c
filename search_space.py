"""Load and validate search_space.yaml into a frozen SweepConfig; sample it with suggest(trial).

Every problem is collected and raised once as a ConfigError, one line per problem:
``<key path>: <what must hold>. Got <value> instead.``
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from errors import ConfigError, first_line

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
PARAM_TYPES = ("float", "int", "categorical")
PARAM_KEYS = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
}
TOP_KEYS = (
    "experiment", "study_name", "model_name", "estimator", "data", "metric", "cv", "seed",
    "sampler", "pruner", "n_trials", "timeout", "max_failures", "fixed", "params",
)
DATA_KEYS = ("dataset", "path", "target", "drop", "holdout", "options")
BUNDLED = (
    "breast_cancer", "wine", "iris", "digits", "diabetes", "make_classification", "make_regression",
)
SYNTHETIC_OPTIONS = ("n_samples", "n_features", "n_informative", "n_classes", "noise")
DEFAULTS: dict[str, Any] = {
    "experiment": "sweep", "study_name": None, "model_name": None, "cv": 5, "seed": 42,
    "sampler": "tpe", "pruner": "none", "n_trials": 20, "timeout": None, "max_failures": 10,
    "fixed": {},
}
MAX_SEED = 2**32 - 1  # numpy's RandomState, behind the samplers and the splits, takes no more
GRID_LIMIT = 100_000  # combinations; GridSampler holds every one of them in memory


@dataclass(frozen=True)
class Param:
    name: str
    distribution: Any  # an optuna.distributions.BaseDistribution
    when: dict[str, tuple] = field(default_factory=dict)  # sampled only if these params match


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
        text = json.dumps(_json_keys(identity), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def settings(self) -> dict[str, Any]:
        """The study settings logged as the parent run's params."""
        settings = {
            "estimator": self.estimator, "dataset": self.data.label, "metric": self.metric,
            "cv_folds": self.cv, "seed": self.seed, "sampler": self.sampler, "pruner": self.pruner,
            "n_trials": self.n_trials, "holdout": self.data.holdout,
        }
        settings.update({f"fixed.{k}": v for k, v in self.fixed.items()})
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
    problems += _unknown_keys(raw, TOP_KEYS, "")
    values: dict[str, Any] = {**DEFAULTS, **{k: v for k, v in raw.items() if k in TOP_KEYS}}
    experiment = _check_name(values, "experiment", problems) or ""  # "" only with a problem
    study_name = _check_name(values, "study_name", problems, optional=True)
    model_name = _check_name(values, "model_name", problems, optional=True)
    estimator: Any = values.get("estimator")
    if estimator not in ESTIMATORS:
        problems.append(_choice_problem("estimator", estimator, ESTIMATORS))
        estimator = None
    data = _check_data(raw.get("data"), problems)
    metric: Any = values.get("metric")
    if not isinstance(metric, str) or not metric:
        problems.append(f"metric: must be a scikit-learn scorer name. Got {metric!r} instead.")
    cv = _check_int(values, "cv", 2, problems)
    seed = _check_int(values, "seed", 0, problems, maximum=MAX_SEED)
    n_trials = _check_int(values, "n_trials", 1, problems)
    max_failures = _check_int(values, "max_failures", 0, problems)
    timeout: Any = values.get("timeout")
    if timeout is not None and (not _is_number(timeout) or timeout <= 0):
        problems.append(f"timeout: must be a number of seconds > 0 or null. Got {timeout!r} instead.")
    sampler: Any = values.get("sampler")
    pruner: Any = values.get("pruner")
    if sampler not in SAMPLERS:
        problems.append(_choice_problem("sampler", sampler, SAMPLERS))
    if pruner not in PRUNERS:
        problems.append(_choice_problem("pruner", pruner, PRUNERS))
    fixed = values.get("fixed") or {}
    if not isinstance(fixed, dict):
        problems.append(f"fixed: must be a mapping of estimator params. Got {fixed!r} instead.")
        fixed = {}
    params = _check_params(raw.get("params"), problems)
    if estimator:
        problems += _check_estimator_params(estimator, fixed, params)
    if sampler == "grid":
        problems += _check_grid(params)
    problems += _check_model_name(model_name, experiment)
    if problems:
        raise ConfigError(problems)
    study_name = study_name or f"{experiment}-{data.label}"
    return SweepConfig(
        experiment=experiment, study_name=study_name, model_name=model_name or experiment,
        estimator=estimator, data=data, metric=metric, cv=cv, seed=seed, sampler=sampler,
        pruner=pruner, n_trials=n_trials, timeout=timeout, max_failures=max_failures,
        fixed=dict(fixed), params=tuple(params), source=text,
    )


def _key(key: Any) -> str:
    """A YAML key as it goes into a problem's key path: on one line, whatever the key holds."""
    return key if isinstance(key, str) and key.isprintable() and key else repr(key)


def _unknown_keys(raw: dict, allowed: tuple, prefix: str) -> list[str]:
    problems = []
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else f" Known keys: {', '.join(allowed)}."
            problems.append(f"{prefix}{_key(key)}: is not a known key.{hint}")
    return problems


def _choice_problem(path: str, value: Any, choices: tuple) -> str:
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"{path}: must be one of {', '.join(choices)}. Got {value!r} instead.{hint}"


def _is_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


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
    problems += _unknown_keys(raw, DATA_KEYS, "data.")
    dataset, path, target = raw.get("dataset"), raw.get("path"), raw.get("target")
    if (dataset is None) == (path is None):
        problems.append("data: must have exactly one of 'dataset' or 'path'."
                        f" Got {sorted(k for k in ('dataset', 'path') if k in raw)} instead.")
    if dataset is not None and dataset not in BUNDLED:
        problems.append(_choice_problem("data.dataset", dataset, tuple(BUNDLED)))
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
    if not _is_number(holdout) or not 0 < holdout < 1:
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
    return [f"data.options.{_key(k)}: is not an option of {dataset}; known: {', '.join(SYNTHETIC_OPTIONS)}."
            for k in sorted(set(options) - set(SYNTHETIC_OPTIONS))]


def _check_params(raw: Any, problems: list[str]) -> list[Param]:
    if not isinstance(raw, dict) or not raw:
        problems.append(f"params: must map at least one estimator param to its range. Got {raw!r} instead.")
        return []
    names = [str(name) for name in raw]
    params: list[Param] = []
    for index, spec in enumerate(raw.values()):
        param = _check_param(names[index], spec, params, names, problems)
        if param is not None:
            params.append(param)
    return params


def _check_param(name: str, spec: Any, earlier: list[Param], names: list[str],
                 problems: list[str]) -> Param | None:
    """`names` are every param's, in file order: a `when` on a refused or later one is told apart."""
    path = f"params.{_key(name)}"
    if not isinstance(spec, dict):
        problems.append(f"{path}: must be a mapping with a 'type'. Got {spec!r} instead.")
        return None
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        problems.append(_choice_problem(f"{path}.type", kind, PARAM_TYPES))
        return None
    found = len(problems)
    problems += _unknown_keys(spec, PARAM_KEYS[kind], f"{path}.")
    distribution = (_categorical(spec, path, problems) if kind == "categorical"
                    else _numeric(kind, spec, path, problems))
    at = names.index(name)
    when = _check_when(spec.get("when"), path, earlier, (names[:at], names[at + 1:]), problems)
    if len(problems) > found or distribution is None:
        return None
    return Param(name=name, distribution=distribution, when=when)


def _categorical(spec: dict, path: str, problems: list[str]) -> Any:
    from optuna.distributions import CategoricalDistribution

    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        problems.append(f"{path}.choices: must be a non-empty list. Got {choices!r} instead.")
        return None
    if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
        problems.append(f"{path}.choices: must hold only strings, numbers, booleans or null. Got {choices!r} instead.")
        return None
    if len(set(map(repr, choices))) != len(choices):
        problems.append(f"{path}.choices: must not repeat a value. Got {choices!r} instead.")
        return None
    return CategoricalDistribution(choices)


def _numeric(kind: str, spec: dict, path: str, problems: list[str]) -> Any:
    from optuna.distributions import FloatDistribution, IntDistribution

    is_int = kind == "int"
    valid = (lambda v: isinstance(v, int) and not isinstance(v, bool)) if is_int else _is_number
    word = "an integer" if is_int else "a number"
    low: Any = spec.get("low")
    high: Any = spec.get("high")
    log: Any = spec.get("log", False)
    step: Any = spec.get("step")
    before = len(problems)
    for key, value in (("low", low), ("high", high)):
        if not valid(value):
            problems.append(f"{path}.{key}: must be {word}. Got {value!r} instead.")
    if not isinstance(log, bool):
        problems.append(f"{path}.log: must be true or false. Got {log!r} instead.")
    if step is not None and (not valid(step) or step <= 0):
        problems.append(f"{path}.step: must be {word} > 0. Got {step!r} instead.")
    if len(problems) > before:
        return None
    if low > high:
        problems.append(f"{path}: low <= high must hold. Got low={low!r}, high={high!r} instead.")
    if log is True and step is not None and (step != 1 or not is_int):  # Optuna's own rule
        problems.append(f"{path}.step: cannot be set when log is true. Got {step!r} instead.")
    if log is True and low <= 0:
        problems.append(f"{path}.low: must be > 0 when log is true. Got {low!r} instead.")
    if step is not None and low <= high and not _divides(step, high - low):
        problems.append(f"{path}.step: must divide high - low ({high - low!r}). Got {step!r} instead.")
    if len(problems) > before:
        return None
    if is_int:
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(float(low), float(high), log=log, step=None if step is None else float(step))


def _divides(step: float, span: float) -> bool:
    if isinstance(step, int) and isinstance(span, int):
        return span % step == 0
    quotient = span / step
    return math.isfinite(quotient) and math.isclose(quotient, round(quotient), rel_tol=0, abs_tol=1e-8)


def _check_when(raw: Any, path: str, earlier: list[Param], around: tuple[list[str], list[str]],
                problems: list[str]) -> dict[str, tuple]:
    """`around`: the names of the params above this one and below it, valid or not."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        problems.append(f"{path}.when: must map an earlier param to its value(s). Got {raw!r} instead.")
        return {}
    known = {p.name: p for p in earlier}
    above, below = around
    when: dict[str, tuple] = {}
    for key, wanted in raw.items():
        other, where = str(key), f"{path}.when.{_key(key)}"
        values = tuple(wanted) if isinstance(wanted, list) else (wanted,)
        if other in above and other not in known:
            continue  # that param was refused, and its own problem says why
        if other not in known:
            close = difflib.get_close_matches(other, list(known), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            if other in below:
                hint = f" It is defined below; move {other!r} above this one."
            problems.append(f"{where}: must name a param defined above this one. Got {key!r} instead.{hint}")
            continue
        if not _can_take(known[other].distribution, values):
            problems.append(f"{where}: must be among {_values_of(known[other].distribution)}."
                            f" Got {wanted!r} instead.")
            continue
        when[other] = values
    return when


def _can_take(distribution: Any, values: tuple) -> bool:
    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return all(v in choices for v in values)
    return all(_is_number(v) and distribution.low <= v <= distribution.high for v in values)


def _values_of(distribution: Any) -> str:
    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return repr(list(choices))
    return f"the numbers from {distribution.low!r} to {distribution.high!r}"


def _check_estimator_params(estimator: str, fixed: dict, params: list[Param]) -> list[str]:
    """Names must be the estimator's params and every value must be one it accepts."""
    cls = estimator_class(estimator)
    known = tuple(cls().get_params())
    problems = []
    for section, names in (("fixed", list(fixed)), ("params", [p.name for p in params])):
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(str(name), known, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                problems.append(f"{section}.{_key(name)}: is not a parameter of {estimator}.{hint}")
    overlap = sorted(set(fixed) & {p.name for p in params})
    problems += [f"fixed.{name}: is also in params; keep it in one place." for name in overlap]
    if problems:
        return problems
    problems += [f"fixed.{name}: {msg}" for name, msg in _rejected(cls, {n: [v] for n, v in fixed.items()})]
    edges = {p.name: _edge_values(p.distribution) for p in params}
    problems += [f"params.{name}: {msg}" for name, msg in _rejected(cls, edges)]
    return problems


def _rejected(cls: type, candidates: dict[str, list]) -> list[tuple[str, str]]:
    """(name, scikit-learn's own message) for each candidate value the estimator refuses."""
    rejected = []
    for name, values in candidates.items():
        for value in values:
            try:
                cls(**{name: value})._validate_params()
            except (TypeError, ValueError) as error:
                rejected.append((name, str(error)))
                break
    return rejected


def _edge_values(distribution: Any) -> list:
    choices = getattr(distribution, "choices", None)
    return list(choices) if choices is not None else [distribution.low, distribution.high]


def _check_grid(params: list[Param]) -> list[str]:
    """Every param must have finitely many values, and not too many combinations of them."""
    problems = [f"params.{_key(p.name)}: must be categorical, an int or a float with a step when sampler"
                f" is grid. Got {p.distribution!r} instead." for p in params if _grid_size(p) is None]
    if problems:
        return problems
    total = math.prod(_grid_size(p) or 1 for p in params)  # none is None: checked above
    if total > GRID_LIMIT:
        problems.append(f"params: must make at most {GRID_LIMIT} combinations when sampler is grid."
                        f" Got {total} instead.")
    return problems


def _grid_size(param: Param) -> int | None:
    """How many values the grid holds for this param (None: a continuous range), without listing them."""
    from optuna.distributions import IntDistribution

    d = param.distribution
    if hasattr(d, "choices"):
        return len(d.choices)
    if isinstance(d, IntDistribution):
        return (d.high - d.low) // d.step + 1  # log ones have step 1
    if d.step is None:
        return None
    return round((d.high - d.low) / d.step) + 1


def _grid_values(param: Param) -> list:
    from optuna.distributions import IntDistribution

    d = param.distribution
    if hasattr(d, "choices"):
        return list(d.choices)
    if isinstance(d, IntDistribution):
        return list(range(d.low, d.high + 1, d.step))
    # In decimal, so the values are the ones written (0.1 + 3 * 0.2 is 0.7, not 0.7000000000000001),
    # and never above high, where scikit-learn may refuse them (subsample 1.0000000000000002).
    low, step = Decimal(repr(d.low)), Decimal(repr(d.step))
    return [min(d.high, float(low + i * step)) for i in range(_grid_size(param) or 0)]


def grid(config: SweepConfig) -> dict[str, list]:
    """The grid sampler's search space: every value of every param."""
    return {p.name: _grid_values(p) for p in config.params}


def estimator_class(name: str) -> type:
    from sklearn import ensemble

    return getattr(ensemble, name)


def suggest(config: SweepConfig, trial: Trial) -> dict[str, Any]:
    """Sample the active params of one trial, in file order (conditions look at earlier params)."""
    params: dict[str, Any] = {}
    for param in config.params:
        if all(params.get(other, _MISSING) in values for other, values in param.when.items()):
            params[param.name] = _suggest_one(trial, param)
    return params


_MISSING = object()


def _suggest_one(trial: Trial, param: Param) -> Any:
    from optuna.distributions import IntDistribution

    d = param.distribution
    if hasattr(d, "choices"):
        return trial.suggest_categorical(param.name, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(param.name, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(param.name, d.low, d.high, step=d.step, log=d.log)
