"""The searched params: each spec of `params:` checked into an Optuna distribution (with its
`when` condition), the values the estimator accepts, the grid of every value, and sampling.

Problems are collected, one line each, in the voice of every check of the search space:
``<key path>: <what must hold>. Got <value> instead.`` The helpers that word them live here,
the lowest module that needs them; search_space.py uses them for the top-level keys.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna import Trial

PARAM_TYPES = ("float", "int", "categorical")
PARAM_KEYS = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
}
GRID_LIMIT = 100_000  # combinations; GridSampler holds every one of them in memory


@dataclass(frozen=True)
class Param:
    name: str
    distribution: Any  # an optuna.distributions.BaseDistribution
    when: dict[str, tuple] = field(default_factory=dict)  # sampled only if these params match



def key_name(key: Any) -> str:
    """A YAML key as it goes into a problem's key path: on one line, whatever the key holds."""
    return key if isinstance(key, str) and key.isprintable() and key else repr(key)


def unknown_keys(raw: dict, allowed: tuple, prefix: str) -> list[str]:
    problems = []
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else f" Known keys: {', '.join(allowed)}."
            problems.append(f"{prefix}{key_name(key)}: is not a known key.{hint}")
    return problems


def choice_problem(path: str, value: Any, choices: tuple) -> str:
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"{path}: must be one of {', '.join(choices)}. Got {value!r} instead.{hint}"


def is_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def check_params(raw: Any, problems: list[str]) -> list[Param]:
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
    path = f"params.{key_name(name)}"
    if not isinstance(spec, dict):
        problems.append(f"{path}: must be a mapping with a 'type'. Got {spec!r} instead.")
        return None
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        problems.append(choice_problem(f"{path}.type", kind, PARAM_TYPES))
        return None
    found = len(problems)
    problems += unknown_keys(spec, PARAM_KEYS[kind], f"{path}.")
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
    valid = (lambda v: isinstance(v, int) and not isinstance(v, bool)) if is_int else is_number
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
        other, where = str(key), f"{path}.when.{key_name(key)}"
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
    return all(is_number(v) and distribution.low <= v <= distribution.high for v in values)


def _values_of(distribution: Any) -> str:
    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return repr(list(choices))
    return f"the numbers from {distribution.low!r} to {distribution.high!r}"


def check_estimator_params(estimator: str, fixed: dict, params: list[Param]) -> list[str]:
    """Names must be the estimator's params and every value must be one it accepts."""
    cls = estimator_class(estimator)
    known = tuple(cls().get_params())
    problems = []
    for section, names in (("fixed", list(fixed)), ("params", [p.name for p in params])):
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(str(name), known, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                problems.append(f"{section}.{key_name(name)}: is not a parameter of {estimator}.{hint}")
    overlap = sorted(set(fixed) & {p.name for p in params})
    problems += [f"fixed.{name}: is also in params; keep it in one place." for name in overlap]
    if problems:
        return problems
    problems += [f"fixed.{name}: {msg}" for name, msg in _rejected(cls, {n: [v] for n, v in fixed.items()})]
    edges = {p.name: _edge_values(p.distribution) for p in params}
    problems += [f"params.{name}: {msg}" for name, msg in _rejected(cls, edges)]
    return problems


def accepts(estimator: str, name: str, value: Any) -> bool:
    """Whether the estimator takes this value of one of its params (scikit-learn's own check)."""
    return not _rejected(estimator_class(estimator), {name: [value]})


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


def check_grid(params: list[Param]) -> list[str]:
    """Every param must have finitely many values, and not too many combinations of them."""
    problems = [f"params.{key_name(p.name)}: must be categorical, an int or a float with a step when sampler"
                f" is grid. Got {p.distribution!r} instead." for p in params if _grid_size(p) is None]
    if problems:
        return problems
    conditional = [p for p in params if p.when]
    if conditional:  # Optuna's grid holds every param in every point: a `when` would repeat points
        return [f"params.{key_name(p.name)}.when: must be left out when sampler is grid (each grid point"
                " sets every param, so a skipped one would run the same point again). Got"
                f" {dict(p.when)!r} instead." for p in conditional]
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


def grid(params: tuple[Param, ...]) -> dict[str, list]:
    """The grid sampler's search space: every value of every param."""
    return {p.name: _grid_values(p) for p in params}


def estimator_class(name: str) -> type:
    from sklearn import ensemble

    return getattr(ensemble, name)


def size_param(estimator: str) -> str:
    """The param that counts the ensemble's trees (boosting iterations)."""
    return "max_iter" if estimator.startswith("Hist") else "n_estimators"


# The estimator's own early stop (`early_stop: true`): 10% of each fit's rows are held out, and
# the ensemble stops growing after 10 trees that do not improve its loss on them. The same
# params go into the exported model, so the refit stops the same way.
EARLY_STOP = {
    "GradientBoosting": {"n_iter_no_change": 10, "validation_fraction": 0.1},
    "HistGradientBoosting": {"early_stopping": True, "n_iter_no_change": 10, "validation_fraction": 0.1},
}


def early_stop_params(estimator: str) -> dict[str, Any]:
    return dict(EARLY_STOP["HistGradientBoosting" if estimator.startswith("Hist") else "GradientBoosting"])


def default_point(estimator: str, params: tuple[Param, ...]) -> dict[str, Any]:
    """The estimator's own defaults, for the searched params whose range holds them (an active
    conditional param only): the cheap, usually strong point a sweep starts from. Optuna samples
    the params left out."""
    defaults = estimator_class(estimator)().get_params()
    point: dict[str, Any] = {}
    for param in params:
        value = defaults.get(param.name, _MISSING)
        if is_active(param, point) and value is not _MISSING and holds(param, value):
            point[param.name] = value
    return point


def holds(param: Param, value: Any) -> bool:
    """Whether the param's distribution could sample this value: a choice, or in range and on the step."""
    d = param.distribution
    choices = getattr(d, "choices", None)
    if choices is not None:
        return any(same_value(value, choice) for choice in choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if type(d).__name__ == "IntDistribution" and value != int(value):
        return False
    if not d.low <= value <= d.high:
        return False
    steps = (value - d.low) / d.step if d.step else 0.0
    return math.isclose(steps, round(steps), abs_tol=1e-9)


def same_value(a: Any, b: Any) -> bool:
    """Equal as the estimator sees them: 100 and 100.0 are; True and 1 are not."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def suggest(params: tuple[Param, ...], trial: Trial) -> dict[str, Any]:
    """Sample the active params of one trial, in file order (conditions look at earlier params)."""
    sampled: dict[str, Any] = {}
    for param in params:
        if is_active(param, sampled):
            sampled[param.name] = _suggest_one(trial, param)
    return sampled


def is_active(param: Param, earlier: dict[str, Any]) -> bool:
    """Whether a trial samples this param, given the values of the params before it: its `when`."""
    return all(earlier.get(other, _MISSING) in values for other, values in param.when.items())


_MISSING = object()


def _suggest_one(trial: Trial, param: Param) -> Any:
    from optuna.distributions import IntDistribution

    d = param.distribution
    if hasattr(d, "choices"):
        return trial.suggest_categorical(param.name, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(param.name, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(param.name, d.low, d.high, step=d.step, log=d.log)
