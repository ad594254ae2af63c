"""The bench's child processes other than `sweep run`: the floor, the glue a user writes instead (with
optuna-integration's MLflowCallback, and the per-trial log_model pattern), RandomizedSearchCV + autolog, the
one-off costs, the calibration of a ~1 s trial, and `sweep run` with two timers (its wait for a run id, TPE);
for anytime.py also HalvingRandomSearchCV in rounds, FLAML, and the rescoring of what each of them found.

Run as `python bench/workloads.py NAME SPEC.json RESULT.json`: each workload reads the same search
space file as `sweep run`, and writes what it measured (epoch times, scores) as JSON for bench.py.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

STARTED = time.time()  # before the heavy imports: the child's own start, like `sweep run`'s


def _load(spec: dict) -> tuple[Any, Any]:
    """The config and data exactly as `sweep run` loads them (same holdout split, same rows)."""
    from gbsweep import dataset, search_space

    config = search_space.load(spec["space"])
    return config, dataset.load(config.data, config.is_classifier, config.cv, config.seed)


def _splitter(config: Any) -> Any:
    """The folds objective.prepare_folds makes, as a splitter object the usual tools take."""
    from sklearn.model_selection import KFold, StratifiedKFold

    splitter = StratifiedKFold if config.is_classifier else KFold
    return splitter(n_splits=config.cv, shuffle=True, random_state=config.seed)


# ---------------------------------------------------------------- (a) the bare floor

def floor(spec: dict) -> dict:
    """The given param sets, fitted and cross-validated by objective.evaluate: no Optuna, no MLflow.
    `threads`: cap OpenMP/BLAS threads as a `sweep run --n-jobs 2` worker is capped (HistGradientBoosting)."""
    from gbsweep.objective import build_estimator, evaluate, prepare_folds, scorer_for
    from gbsweep.params import size_param

    config, data = _load(spec)
    if spec.get("threads"):  # after sklearn's import: threadpoolctl caps only the libraries loaded by then
        import sklearn.ensemble  # noqa: F401 - loads HistGradientBoosting's OpenMP runtime
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=spec["threads"])
    folds = prepare_folds(config, data.X_train, data.y_train, data.preprocessor)
    scorer, size = scorer_for(config), size_param(config.estimator)
    loop_start, done, scores, fit_s = time.time(), [], [], []
    for params in spec["params"]:
        result = evaluate(build_estimator(config, params), folds, scorer, None, size)
        done.append(time.time())
        scores.append(result.score)
        fit_s.append(result.fit_time_s)
    return {"loop_start": loop_start, "done": done, "scores": scores, "fit_s": fit_s}


def calibrate(spec: dict) -> dict:
    """Seconds per tree of one trial (all folds) at the middle of the space: sizes a ~1 s trial."""
    from gbsweep.objective import build_estimator, evaluate, prepare_folds, scorer_for
    from gbsweep.params import size_param

    config, data = _load(spec)
    folds = prepare_folds(config, data.X_train, data.y_train, data.preprocessor)
    params = {p.name: _middle(p.distribution) for p in config.params}
    trees = build_estimator(config, params).get_params()[size_param(config.estimator)]
    timings = [evaluate(build_estimator(config, params), folds, scorer_for(config)).fit_time_s
               for _ in range(3)]
    return {"s_per_tree": min(timings) / trees}


def _middle(distribution: Any) -> Any:
    if hasattr(distribution, "choices"):
        return distribution.choices[0]
    if distribution.log:
        middle = math.sqrt(distribution.low * distribution.high)
    else:
        middle = (distribution.low + distribution.high) / 2
    return round(middle) if isinstance(distribution.low, int) else middle


def fixed_costs(spec: dict) -> dict:
    """What every variant pays once, whatever its trials: imports, and a new sqlite tracking store
    (MLflow runs its schema migrations on a fresh mlflow.db, as the glue opens it; sweep copies an
    empty store it migrated once per MLflow version; a second sweep in the folder does neither)."""
    import importlib

    seconds = {}
    for module in ("pandas", "sklearn.ensemble", "optuna", "mlflow"):  # each on top of the ones before
        started = time.perf_counter()
        importlib.import_module(module)
        seconds[f"import {module}"] = time.perf_counter() - started
    import mlflow

    from gbsweep import tracking

    uri = spec["tracking_uri"]
    by_sweep = uri.replace("mlflow.db", "by-sweep.db")
    tracking.create_sqlite_store_whole(uri.replace("mlflow.db", "first.db"))  # its cached store, once
    for name, store, make in (("new mlflow.db by MLflow", uri, None),
                              ("new mlflow.db by sweep", by_sweep, tracking.create_sqlite_store_whole),
                              ("existing mlflow.db", uri, None)):
        started = time.perf_counter()
        if make:
            make(store)
        mlflow.MlflowClient(store).search_experiments(max_results=1)
        seconds[name] = time.perf_counter() - started
    return {"seconds": seconds}


# ---------------------------------------------------------------- the glue a user writes instead

def _estimator(config: Any, params: dict, fixed: dict | None = None) -> Any:
    """The estimator as a script builds it: the class by name, the fixed params, then the trial's.
    `fixed`: the space file's own, when given (config.fixed may hold what `sweep` adds to them)."""
    from sklearn import ensemble

    return getattr(ensemble, config.estimator)(**{**(config.fixed if fixed is None else fixed), **params})


def suggest_by_hand(config: Any, trial: Any) -> dict[str, Any]:
    """The suggest_* calls a script writes out by hand for the space (no conditional params: the bench's
    spaces have none). Enqueued params come back as they were enqueued."""
    from optuna.distributions import IntDistribution

    params = {}
    for param in config.params:
        d = param.distribution
        if param.when:
            raise SystemExit(f"bench: the glue writes no conditional params ({param.name}).")
        if hasattr(d, "choices"):
            params[param.name] = trial.suggest_categorical(param.name, d.choices)
        elif isinstance(d, IntDistribution):
            params[param.name] = trial.suggest_int(param.name, d.low, d.high, step=d.step, log=d.log)
        else:
            params[param.name] = trial.suggest_float(param.name, d.low, d.high, step=d.step, log=d.log)
    return params


def _pinned(*names: str) -> list[str]:
    """pip requirements pinned to what is installed: a careful user passes them, as `sweep` does, and MLflow
    then skips inferring them (a subprocess that loads the model)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in names]


def glue(spec: dict) -> dict:
    """(f) the honest peer: what a user writes instead of `sweep`, set up as well as the docs allow.

    Optuna on a journal file, optuna-integration's MLflowCallback writing one nested child run per
    trial under one parent run, the same enqueued params scored on the same folds; then the same end
    state as `sweep run`: the best params refitted on the training part, scored on the holdout, the
    model logged (signature, input example, pinned requirements, cloudpickle), registered and aliased.
    (MLflow's async logging would not help it: ending each child run waits for that run's queue.)
    With `timeout` instead of `params` (anytime.py), TPE draws every trial itself for that many seconds:
    the anytime curve is the study's, the end state comes after it, as a user's script would do it;
    `fixed` (anytime.py) gives the space file's fixed params, the only ones a script knows of.
    """
    import mlflow
    import mlflow.sklearn
    import optuna
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from optuna_integration import MLflowCallback
    from sklearn.metrics import get_scorer
    from sklearn.model_selection import cross_val_score

    config, data = _load(spec)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no log line per trial, as `sweep run -q`
    X, y = data.X_train.to_numpy(), data.y_train  # arrays: no per-fit feature-name checks
    folds = list(_splitter(config).split(X, y))  # the floor's and the sweep's folds, split once
    uri = spec["tracking_uri"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(config.experiment)
    # `storage` (slowlink.py): an RDB URL, as a user with workers on many hosts would give it
    storage = spec.get("storage") or optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(spec["journal"]))
    study = optuna.create_study(study_name=config.study_name, storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=config.seed))
    for params in spec.get("params", []):
        study.enqueue_trial(params)
    budget = {"timeout": spec["timeout"]} if spec.get("timeout") else {"n_trials": len(spec["params"])}
    callback = MLflowCallback(tracking_uri=uri, metric_name=config.metric, create_experiment=False,
                              mlflow_kwargs={"nested": True})

    def objective(trial: Any) -> float:
        model = _estimator(config, suggest_by_hand(config, trial), spec.get("fixed"))
        return float(cross_val_score(model, X, y, cv=folds, scoring=config.metric).mean())

    with mlflow.start_run(run_name=config.study_name):
        study.optimize(objective, callbacks=[callback], **budget)
        loop_end = time.time()
        best = study.best_params
        model = _estimator(config, best, spec.get("fixed")).fit(data.X_train, data.y_train)
        holdout = float(get_scorer(config.metric)(model, data.X_test, data.y_test))
        mlflow.log_params({f"best.{k}": v for k, v in best.items()})
        mlflow.log_metrics({f"best_{config.metric}": study.best_value, f"holdout_{config.metric}": holdout})
        example = data.X_train.head(5)
        info = mlflow.sklearn.log_model(
            model, name="model", signature=infer_signature(example, model.predict(example)),
            input_example=example, pip_requirements=_pinned("mlflow", "scikit-learn", "cloudpickle", "numpy",
                                                             "pandas", "scipy"),
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
            registered_model_name=config.model_name)
    MlflowClient().set_registered_model_alias(config.model_name, "champion", info.registered_model_version)
    return {"loop_end": loop_end, "registered": time.time(), "holdout": holdout}


# What MLflow 3.17's own error asks for when a GradientBoosting model is saved in its default
# (skops) format; a script copies it from the message.
GLUE_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


def glue_per_trial(spec: dict) -> dict:
    """(c) the other usual glue: the fluent API, a nested run and a model logged per trial (each trial's
    params refitted on the training part), Optuna on its RDB storage (sqlite), the given params enqueued."""
    import mlflow
    import mlflow.sklearn
    import optuna
    from sklearn.model_selection import cross_val_score

    config, data = _load(spec)
    splitter = _splitter(config)
    mlflow.set_tracking_uri(spec["tracking_uri"])
    mlflow.set_experiment(config.experiment)
    study = optuna.create_study(study_name=config.study_name, storage=spec["storage"], direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=config.seed))
    for params in spec.get("params", []):
        study.enqueue_trial(params)

    def objective(trial: Any) -> float:
        params = suggest_by_hand(config, trial)
        with mlflow.start_run(nested=True, run_name=f"trial-{trial.number}"):
            model = _estimator(config, params)
            scores = cross_val_score(model, data.X_train, data.y_train, cv=splitter, scoring=config.metric)
            mlflow.log_params(params)
            mlflow.log_metric(config.metric, float(scores.mean()))
            model.fit(data.X_train, data.y_train)  # something to log: scripts refit on the training part
            mlflow.sklearn.log_model(model, name="model", skops_trusted_types=GLUE_TRUSTED_TYPES)
        return float(scores.mean())

    with mlflow.start_run(run_name=config.study_name):
        study.optimize(objective, n_trials=config.n_trials)
    return {}


# ---------------------------------------------------------------- (d) RandomizedSearchCV + autolog

class LogUniformInt:
    """An integer distribution, uniform in log space: scipy.stats has none, and RandomizedSearchCV only
    needs `rvs(random_state=...)`."""

    def __init__(self, low: int, high: int) -> None:
        from scipy.stats import loguniform

        self.low, self.high, self.continuous = low, high, loguniform(low, high + 1)

    def rvs(self, random_state: Any = None) -> int:
        return min(self.high, int(self.continuous.rvs(random_state=random_state)))


def distributions(config: Any) -> dict[str, Any]:
    """The search space as scipy.stats distributions and lists, the way RandomizedSearchCV takes it."""
    from optuna.distributions import IntDistribution
    from scipy.stats import loguniform, randint, uniform

    space = {}
    for param in config.params:
        d = param.distribution
        if param.when:
            raise SystemExit(f"bench: RandomizedSearchCV has no conditional params ({param.name}).")
        if hasattr(d, "choices"):
            space[param.name] = list(d.choices)
        elif d.step is not None and not (isinstance(d, IntDistribution) and d.step == 1):
            space[param.name] = _stepped(d)
        elif isinstance(d, IntDistribution):
            space[param.name] = LogUniformInt(d.low, d.high) if d.log else randint(d.low, d.high + 1)
        else:
            space[param.name] = loguniform(d.low, d.high) if d.log else uniform(d.low, d.high - d.low)
    return space


def _stepped(distribution: Any) -> list:
    """The values of a stepped range, as Optuna samples them (rounded, so 0.5 + 3 * 0.1 is 0.8)."""
    d = distribution
    count = round((d.high - d.low) / d.step) + 1
    values = [d.low + i * d.step for i in range(count)]
    return values if isinstance(d.low, int) else [min(d.high, round(v, 12)) for v in values]


def rscv(spec: dict) -> dict:
    """RandomizedSearchCV with mlflow.sklearn.autolog(), as its docs show: same folds, budget and space."""
    import mlflow
    import mlflow.sklearn
    from sklearn.model_selection import RandomizedSearchCV

    config, data = _load(spec)
    mlflow.set_tracking_uri(spec["tracking_uri"])
    mlflow.set_experiment(config.experiment)
    mlflow.sklearn.autolog()
    search = RandomizedSearchCV(_estimator(config, {}), distributions(config), n_iter=config.n_trials,
                                scoring=config.metric, cv=_splitter(config), random_state=config.seed)
    search_start = time.time()
    search.fit(data.X_train, data.y_train)
    results = search.cv_results_
    return {"search_start": search_start, "search_end": time.time(), "best": float(search.best_score_),
            "n_splits": config.cv, "refit_s": float(search.refit_time_),
            "fit_s": results["mean_fit_time"].tolist(), "score_s": results["mean_score_time"].tolist(),
            "values": results["mean_test_score"].tolist()}


# ---------------------------------------------------------------- anytime.py: halving, FLAML, rescoring

HALVING_FACTOR = 3
HALVING_RUNGS = 4  # 27, 9, 3, 1 candidates, the last one at (close to) the full resource: on anytime.py's fit
# workload a first round took 46 s, as long as one of 3 rungs (9 candidates, 44 s), and looked at 3x as many

# sklearn scorer names FLAML spells its own way (the ones spelt alike pass as they are: roc_auc, r2, accuracy)
FLAML_METRICS = {"neg_log_loss": "log_loss", "neg_mean_squared_error": "mse", "neg_mean_absolute_error": "mae",
                 "f1_macro": "macro_f1", "f1_micro": "micro_f1", "average_precision": "ap"}


def halving(spec: dict) -> dict:
    """HalvingRandomSearchCV rounds back to back until `deadline` (epoch seconds; the bench's launch + B).

    Halving is not anytime by itself: a round hands over a model only when it ends, so rounds are run
    in turn (random_state = seed + round, n_candidates='exhaust', factor 3, min_resources giving `rungs`
    rungs, HALVING_RUNGS by default), and the deadline is checked between them (the round running at
    the deadline ends after it: the bench does not count it). The resource is the ensemble's size when
    the space searches it (up to the top of its range, the param taken out of the distributions), else
    the rows (sklearn's default). No autolog, no refit per round: a careful user's search, costing
    nothing but the fits; `n_jobs` (default -1): candidates and folds on every core, as a user with a wall
    budget runs a scikit-learn search."""
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401 - makes the import below work
    from sklearn.model_selection import HalvingRandomSearchCV

    from gbsweep.params import size_param

    config, data = _load(spec)
    X, y = data.X_train.to_numpy(), data.y_train
    space, size = distributions(config), size_param(config.estimator)
    searched = {p.name: p.distribution for p in config.params}
    if size in searched:
        resource, max_resources, floor = size, int(searched[size].high), 1
        space.pop(size)
    else:  # sklearn's own floor for rows: 2 per fold (and class)
        resource, max_resources = "n_samples", len(y)
        floor = config.cv * 2 * (len(set(y.tolist())) if config.is_classifier else 1)
    min_resources = max(floor, max_resources // HALVING_FACTOR ** (spec.get("rungs", HALVING_RUNGS) - 1))
    fixed = config.fixed if spec.get("fixed") is None else spec["fixed"]
    rounds: list[dict] = []
    while time.time() < spec["deadline"]:
        search = HalvingRandomSearchCV(
            _estimator(config, {}, fixed), space, n_candidates="exhaust", factor=HALVING_FACTOR,
            resource=resource, min_resources=min_resources,
            max_resources=max_resources if resource != "n_samples" else "auto",
            cv=_splitter(config), scoring=config.metric, refit=False, random_state=config.seed + len(rounds),
            n_jobs=spec.get("n_jobs", -1)).fit(X, y)
        best = {**_plain(search.best_params_), **({resource: max_resources} if resource != "n_samples" else {})}
        rounds.append({"end": time.time(), "score": float(search.best_score_), "params": {**fixed, **best},
                       "candidates": int(search.n_candidates_[0]), "resources": [int(r) for r in search.n_resources_]})
    return {"rounds": rounds, "resource": resource, "min_resources": min_resources, "max_resources": max_resources}


def _plain(params: dict) -> dict:
    """numpy scalars as Python's (for JSON)."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in params.items()}


def flaml_search(spec: dict) -> dict:
    """FLAML's AutoML with its HistGradientBoosting learner ("histgb"), its own search space, `budget`
    seconds of its own (time_budget counts from its fit() start), its own CV with the sweep's fold count
    and seed; every iteration logged (log_type all). Each logged config comes back as the estimator
    params FLAML would build from it (its learner's config2params: random_state 24092023, max_bins...),
    and its end as epoch seconds (fit start + the log's wall_clock_time). No MLflow logging, no final
    retrain: the search alone, as with halving."""
    from importlib.metadata import version

    from flaml import AutoML
    from flaml.automl.contrib.histgb import HistGradientBoostingEstimator
    from flaml.automl.training_log import training_log_reader

    config, data = _load(spec)
    if not config.estimator.startswith("HistGradientBoosting"):
        raise SystemExit(f"bench: FLAML's histgb learner is no {config.estimator}")
    automl = AutoML()
    fit_start = time.time()
    automl.fit(data.X_train, data.y_train, task="classification" if config.is_classifier else "regression",
               metric=FLAML_METRICS.get(config.metric, config.metric), estimator_list=["histgb"],
               time_budget=spec["budget"], eval_method="cv", n_splits=config.cv, seed=config.seed,
               log_file_name=spec["log"], log_type="all", mlflow_logging=False, retrain_full=False, verbose=0)
    fit_start = getattr(automl, "_start_time_flag", fit_start)  # the origin of the log's wall_clock_time
    records = []
    with training_log_reader(spec["log"]) as reader:
        for record in reader.records():
            learner = HistGradientBoostingEstimator(automl._state.task, **record.config)
            records.append({"end": fit_start + record.wall_clock_time, "loss": float(record.validation_loss),
                            "params": _plain(learner.params)})
    return {"fit_start": fit_start, "records": records, "flaml": version("flaml")}


def rescore(spec: dict) -> dict:
    """Outside every timing: param sets (whole estimator params) cross-validated on the shared folds
    (`cv`), and refitted on the training part and scored on the holdout (`holdout`); each set once."""
    from sklearn.metrics import get_scorer
    from sklearn.model_selection import cross_val_score

    config, data = _load(spec)
    X, y = data.X_train.to_numpy(), data.y_train
    X_test, scorer = data.X_test.to_numpy(), get_scorer(config.metric)
    folds = list(_splitter(config).split(X, y))
    done: dict[tuple[str, str], float] = {}

    def once(kind: str, params: dict) -> float:
        key = (kind, json.dumps(params, sort_keys=True))
        if key not in done:
            model = _estimator(config, params, {})
            done[key] = (float(cross_val_score(model, X, y, cv=folds, scoring=config.metric).mean()) if kind == "cv"
                         else float(scorer(model.fit(X, y), X_test, data.y_test)))
        return done[key]

    return {"cv": [once("cv", p) for p in spec["cv"]], "holdout": [once("holdout", p) for p in spec["holdout"]]}


# ---------------------------------------------------------------- sweep, instrumented

def sweep_main(spec: dict) -> dict:
    """`sweep run` in this process (what the console script runs: cli.main), with two timers the study
    cannot show: the trial's wait for its MLflow child run id (runner._link_run) and the
    sampler's time per trial (around what studies.make_sampler returns). A timer whose function is
    gone from the sweep code is skipped, and said so on stderr: a move must move the timer along."""
    from gbsweep import cli, runner, studies

    waits: dict[str, float] = {}
    link = getattr(runner, "_link_run", None)

    def timed_link(trial: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return link(trial, *args, **kwargs)
        finally:
            waits[str(trial.number)] = time.perf_counter() - started

    if link is not None:
        runner._link_run = timed_link
    sampler = TimedSampler(None)
    make_sampler = getattr(studies, "make_sampler", None)
    if make_sampler is not None:
        studies.make_sampler = lambda config, seed=None: sampler.wrap(make_sampler(config, seed))
    for name, found in (("runner._link_run", link), ("studies.make_sampler", make_sampler)):
        if found is None:
            print(f"bench: {name} is gone from the sweep code: that timer is skipped", file=sys.stderr)
    code = cli.main(spec["argv"])
    if code != 0:
        raise SystemExit(code)
    # sweep's console script (cli.cli, where it exists) skips the interpreter's teardown: so does this one.
    return {"skip_teardown": hasattr(cli, "cli"), "link_wait_s": waits if link is not None else None,
            "sampler_s": sampler.seconds if make_sampler is not None else None}


class TimedSampler:
    """Delegates to the sweep's sampler and adds up its time per trial number: TPE's cost grows with the
    trials by design, the runner's should not, so the two are told apart."""

    TIMED = ("before_trial", "infer_relative_search_space", "sample_relative", "sample_independent",
             "after_trial")

    def __init__(self, inner: Any) -> None:
        self.inner, self.seconds = inner, {}

    def wrap(self, inner: Any) -> TimedSampler:
        self.inner = inner
        return self

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name not in self.TIMED:
            return method

        def timed(study: Any, trial: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(study, trial, *args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                self.seconds[str(trial.number)] = self.seconds.get(str(trial.number), 0.0) + spent

        return timed


WORKLOADS: dict[str, Callable[[dict], dict]] = {
    "floor": floor, "calibrate": calibrate, "fixed": fixed_costs, "glue": glue,
    "glue_per_trial": glue_per_trial, "rscv": rscv, "sweep": sweep_main,
    "halving": halving, "flaml": flaml_search, "rescore": rescore,
}


def main(argv: list[str]) -> int:
    name, spec_path, result_path = argv
    warnings.filterwarnings("ignore")  # the libraries' warnings would bury the bench's own lines
    spec = json.loads(Path(spec_path).read_text())
    result = WORKLOADS[name](spec)
    Path(result_path).write_text(json.dumps({"started": STARTED, **result}))
    if result.get("skip_teardown"):  # as sweep's console script does: its stores are closed by now
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
