"""What one trial computes: params -> estimator -> cross-validated score on the training part.

Pure: no study, no runs, no slots; runner.py wraps it into Optuna's objective. The folds are
split (and the preprocessing fitted) once per process: it does not depend on the hyperparameters,
so a trial only fits the estimator, its folds side by side in threads where the process has cores
to spare (GradientBoosting's trees are built without the GIL). With a pruner, every fold's ensemble
grows in chunks of trees (warm start) in lockstep, and the mean fold score is reported after each
chunk; a fold whose model stopped itself (its early stop) grows no further. Once per trial, the
first fold's model is measured for deployment: its predict latency on that fold's validation rows
and its pickled size (never on the holdout, which the folds do not hold).
"""

from __future__ import annotations

import difflib
import math
import pickle
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gbsweep.errors import ConfigError
from gbsweep.params import estimator_class
from gbsweep.search_space import SweepConfig

PRUNING_REPORTS = 10  # how many chunks a pruned ensemble is grown in
PREDICT_ROWS = 1000  # predict_ms is the time to predict this many rows
PREDICT_REPEATS = 5  # timed predict calls after one warm-up; their median is kept
THREADED_FOLD_ROWS = 2000  # see fold_threads


@dataclass(frozen=True)
class Fold:
    X_train: Any
    y_train: Any
    X_valid: Any
    y_valid: Any


@dataclass(frozen=True)
class TrialResult:
    score: float  # mean over the folds
    score_std: float
    fit_time_s: float  # fitting and scoring every fold
    trees: float  # the trees (boosting iterations) the folds' models grew, mean per fold


@dataclass(frozen=True)
class Footprint:
    """What a fitted model costs to deploy, measured once per trial on the first fold's model."""

    predict_ms: float  # median milliseconds to predict PREDICT_ROWS validation rows
    model_bytes: int  # len(pickle.dumps(model, protocol=5))
    measure_s: float  # the seconds measuring took (not counted in fit_time_s)


class TrialFailed(Exception):
    """A trial whose estimator raised or scored NaN; the sweep goes on."""


def fold_threads(estimator: str, folds: int, fold_rows: int, cores: int) -> int:
    """How many folds one trial fits at once: every fold, where the process has two cores or more
    and a fold's training part THREADED_FOLD_ROWS rows or more, for GradientBoosting (it builds its
    trees without the GIL: 3 folds of 3,300 rows in 3 threads on 2 cores ran 1.3-1.9 times as fast
    as one after another here, 700 rows 1.3 times as slow, the GIL held between trees); one for
    HistGradientBoosting, whose own OpenMP threads already use the cores (threads around it ran
    3 times as slow)."""
    wide = cores >= 2 and fold_rows >= THREADED_FOLD_ROWS and not estimator.startswith("Hist")
    return folds if wide else 1


def build_estimator(config: SweepConfig, params: dict[str, Any]) -> Any:
    return estimator_class(config.estimator)(**{**config.fixed, **params})


def build_model(config: SweepConfig, preprocessor: Any, params: dict[str, Any]) -> Any:
    """The estimator the user gets: preprocessing (if any) then the tuned estimator."""
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline

    estimator = build_estimator(config, params)
    if preprocessor is None:
        return estimator
    return Pipeline([("preprocess", clone(preprocessor)), ("model", estimator)])


def prepare_folds(config: SweepConfig, X: Any, y: Any, preprocessor: Any) -> list[Fold]:
    from sklearn.base import clone
    from sklearn.model_selection import KFold, StratifiedKFold

    splitter_class = StratifiedKFold if config.is_classifier else KFold
    splitter = splitter_class(n_splits=config.cv, shuffle=True, random_state=config.seed)
    folds = []
    for train, valid in splitter.split(X, y):
        X_train, X_valid = X.iloc[train], X.iloc[valid]
        if preprocessor is not None:
            fitted = clone(preprocessor).fit(X_train)
            X_train, X_valid = fitted.transform(X_train), fitted.transform(X_valid)
        else:
            X_train, X_valid = X_train.to_numpy(), X_valid.to_numpy()
        folds.append(Fold(X_train, y[train], X_valid, y[valid]))
    return folds


def scorer_for(config: SweepConfig) -> Callable:
    from sklearn.metrics import get_scorer

    return get_scorer(config.metric)


def check_metric(config: SweepConfig, y: Any) -> None:
    """Refuse, before trial 0, a scorer that cannot score this task and target."""
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.metrics import get_scorer_names

    names = get_scorer_names()
    if config.metric not in names:
        close = difflib.get_close_matches(config.metric, names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError([f"metric: must be a scikit-learn scorer name. Got {config.metric!r} instead.{hint}"])
    module = getattr(getattr(scorer_for(config), "_score_func", None), "__module__", "")
    if module and config.is_classifier == module.endswith("_regression"):
        task = "classification" if config.is_classifier else "regression"
        raise ConfigError([f"metric: {config.metric!r} does not score {task}, the task of {config.estimator}."])
    dummy = DummyClassifier(strategy="prior") if config.is_classifier else DummyRegressor()
    X = [[0.0]] * len(y)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scorer_for(config)(dummy.fit(X, y), X, y)
    except (ValueError, TypeError) as error:
        raise ConfigError([_refusal(config.metric, y, error)]) from None


def _refusal(metric: str, y: Any, error: Exception) -> str:
    """Why the scorer refused the target, in words a user can act on."""
    from sklearn.utils.multiclass import type_of_target

    if type_of_target(y) == "multiclass":
        classes = len(set(y))
        return (f"metric: {metric!r} scores binary targets only; this target has {classes} classes."
                " Use a multiclass scorer such as roc_auc_ovr, f1_macro or accuracy.")
    first = str(error).splitlines()[0].rstrip(".")
    return f"metric: {metric!r} cannot score this target: {first}."


def evaluate(estimator: Any, folds: list[Fold], scorer: Callable,
             report: Callable[[int, float], None] | None = None, size: str = "n_estimators",
             measured: Callable[[Footprint], None] | None = None, threads: int = 1) -> TrialResult:
    """Cross-validate one estimator, `threads` folds at once; with `report`, grow every fold's
    ensemble in chunks (warm start, in lockstep) and report the mean fold score after each; `report`
    may raise to stop. With `measured`, the first fold's model is measured once, as it stands when
    the trial ends (a stopped trial's model as it stood: fewer trees)."""
    from concurrent.futures import ThreadPoolExecutor

    from sklearn.base import clone

    models = [clone(estimator) for _ in folds]
    total = estimator.get_params()[size]
    steps = _chunks(total) if report is not None else [total]
    scores = [math.nan] * len(folds)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="sweep-fold") if threads > 1 else None
    started = time.perf_counter()
    try:
        for step in steps:
            growing = [i for i, model in enumerate(models) if not stopped_early(model, size)]
            if not growing:
                break  # every fold's model stopped itself: more chunks would change nothing

            def fit(i: int, step: int = step) -> float:
                return _fit_score(models[i], folds[i], scorer, {size: step, "warm_start": report is not None})

            for i, value in zip(growing, pool.map(fit, growing) if pool else map(fit, growing), strict=True):
                scores[i] = value
            mean = sum(scores) / len(scores)
            if math.isnan(mean):
                raise TrialFailed(f"the score is NaN after {step} trees")
            if report is not None:
                _report_or_measure(report, step, mean, measured, models[0], folds[0])
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)  # an interrupt does not wait for the other folds
    fit_time_s = time.perf_counter() - started
    if measured is not None:
        measured(footprint(models[0], folds[0].X_valid))
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    grown = sum(trees_grown(model, size) for model in models) / len(models)
    return TrialResult(score=mean, score_std=std, fit_time_s=fit_time_s, trees=round(grown, 1))


def _report_or_measure(report: Callable[[int, float], None], step: int, mean: float,
                       measured: Callable[[Footprint], None] | None, model: Any, fold: Fold) -> None:
    """Report the chunk's score; a trial stopped by it has its model measured as it stands."""
    try:
        report(step, mean)  # raises optuna.TrialPruned to stop here
    except Exception:
        if measured is not None:
            measured(footprint(model, fold.X_valid))
        raise


def trees_grown(model: Any, size: str) -> int:
    """The trees (boosting iterations) a fitted model holds: fewer than asked when it stopped early."""
    return int(getattr(model, "n_iter_" if size == "max_iter" else "n_estimators_", 0))


def stopped_early(model: Any, size: str) -> bool:
    """Whether a fitted model stopped growing before its asked size (its own early stop)."""
    grown = trees_grown(model, size)
    return 0 < grown < model.get_params()[size]


def footprint(model: Any, X_valid: Any, repeats: int = PREDICT_REPEATS) -> Footprint:
    """The median time to predict PREDICT_ROWS of these rows (repeated to fill the batch when
    fewer, so a call's fixed overhead weighs the same whatever the fold's size), after one
    warm-up call; and the model's pickled size."""
    import numpy as np

    started = time.perf_counter()
    rows = np.resize(np.arange(X_valid.shape[0]), PREDICT_ROWS)
    batch = X_valid.iloc[rows] if hasattr(X_valid, "iloc") else X_valid[rows]
    model.predict(batch)  # warm-up: first-call costs (imports, caches) are not the model's
    times = []
    for _ in range(repeats):
        begun = time.perf_counter()
        model.predict(batch)
        times.append(time.perf_counter() - begun)
    size = len(pickle.dumps(model, protocol=5))
    return Footprint(predict_ms=statistics.median(times) * 1000, model_bytes=size,
                     measure_s=time.perf_counter() - started)


def _fit_score(model: Any, fold: Fold, scorer: Callable, params: dict) -> float:
    model.set_params(**params)
    model.fit(fold.X_train, fold.y_train)
    return float(scorer(model, fold.X_valid, fold.y_valid))


def _chunks(total: int) -> list[int]:
    chunk = max(1, math.ceil(total / PRUNING_REPORTS))
    return sorted({min(total, n) for n in range(chunk, total + chunk, chunk)})
