"""Range advice: a numeric param whose best trials crowd one end of its range, where the estimator
would take values past that end, is named with the bound to move (docs/search-space.md "Range advice").

Pure: a config and its study's trials in, one line per param out; nothing is said when there is
nothing to say. `sweep run` prints the lines and logs them as `advice.txt`; `sweep best --advice`
prints them for any study.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from gbsweep.params import Param, accepts

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from gbsweep.search_space import SweepConfig

MIN_TRIALS = 10  # completed trials (that sampled the param) before anything is said
TOP = 5  # the best trials looked at
CROWD = 4  # how many of them at one end make a crowd
EDGE = 0.1  # the share of the range's width, at each end, that counts as that end
ARTIFACT = "advice.txt"  # on the parent run
NONE = "no advice: no param's best trials crowd an end of its range that the estimator could pass."
_SLACK = 1e-9  # a value exactly on the band's border is in it, whatever the float rounding


def advise(config: SweepConfig, trials: Sequence[FrozenTrial], maximize: bool = True) -> list[str]:
    """One line per numeric param whose best trials crowd an end the estimator could pass."""
    sign = 1 if maximize else -1
    # (score, greater is better; trial number; params) of each completed trial
    done = [(sign * t.values[0], t.number, t.params) for t in trials if t.state.name == "COMPLETE" and t.values]
    lines = [_advice(config.estimator, param, done) for param in config.params]
    return [line for line in lines if line]


def as_text(lines: list[str]) -> str:
    """The advice as the parent run's artifact: the lines, or one line saying there are none."""
    return "\n".join(lines or [NONE]) + "\n"


def _advice(estimator: str, param: Param, done: list[tuple[float, int, dict]]) -> str | None:
    d = param.distribution
    if hasattr(d, "choices") or d.low == d.high:
        return None  # categories have no end to move; a one-value range is fixed on purpose
    having = sorted(((score, number, params[param.name]) for score, number, params in done
                     if param.name in params), key=lambda row: (-row[0], row[1]))  # a `when` param may be unset
    if len(having) < MIN_TRIALS:
        return None
    best = having[:TOP]
    if best[-1][0] <= statistics.median(score for score, _, _ in having):
        return None  # a flat objective: the "best" trials are an arbitrary pick among ties
    positions = [_position(d, value) for _, _, value in best]
    for end, crowded in (("high", [p >= 1 - EDGE - _SLACK for p in positions]),
                         ("low", [p <= EDGE + _SLACK for p in positions])):
        if sum(crowded) >= CROWD and accepts(estimator, param.name, _past(d, end)):
            return _line(param, end, sum(crowded), len(best))
    return None


def _position(d: Any, value: float) -> float:
    """Where a value lies in the range: 0 at low, 1 at high; on the log scale for a log range."""
    if d.log:
        return (math.log(value) - math.log(d.low)) / (math.log(d.high) - math.log(d.low))
    return (value - d.low) / (d.high - d.low)


def _past(d: Any, end: str) -> float:
    """The nearest value past an end the search could use: one step further (an int's step is 1),
    else the next float, so an estimator's bound is met exactly (subsample 1.0, learning_rate 0)."""
    bound = d.high if end == "high" else d.low
    step = getattr(d, "step", None)
    if step is None:
        return math.nextafter(bound, math.inf if end == "high" else -math.inf)
    if isinstance(bound, int):
        return bound + step if end == "high" else bound - step
    # In decimal, so 0.95 + 0.05 is 1.0, the value a user would write as the new bound.
    moved = Decimal(repr(bound)) + (Decimal(repr(step)) if end == "high" else -Decimal(repr(step)))
    return float(moved)


def _line(param: Param, end: str, crowded: int, looked_at: int) -> str:
    d = param.distribution
    which = "top" if end == "high" else "bottom"
    having = " that sample it" if param.when else ""
    scale = " (log scale)" if d.log else ""
    verb = "raise" if end == "high" else "lower"
    return (f"advice: {param.name}: {crowded} of the {looked_at} best trials{having} lie in the {which}"
            f" {EDGE:.0%} of [{d.low!r}, {d.high!r}]{scale}; {verb} params.{param.name}.{end}")
