"""The anytime bench: how soon each tool hands over a good model when all get the same wall budget B.

On each workload (a search space and its data) and seed, every variant is a fresh child process of this
one, with the same B, data, holdout split, folds (the sweep's: StratifiedKFold/KFold(cv, shuffle=True,
random_state=seed)) and space, run one after the other (never two at once: 2 cores). Time 0 is the
moment this process launches the child:
  glue     Optuna TPESampler(seed) + optuna-integration's MLflowCallback (nested runs under a parent run)
           on a journal file, cross_val_score on the shared folds, study.optimize(timeout=B); then the
           refit, log and register a script does (after the search: not on the curve)
  sweep    `sweep run --timeout B --n-trials 100000 -q` on its own journal file and sqlite:; the space
           file names no tuner setting (sampler, pruner, early stop, ...): the defaults as shipped.
           More of them with --sweep-variant 'LABEL|key=value;key=value|--cli-arg value'
  halving  HalvingRandomSearchCV rounds back to back until B (random_state seed + round, factor 3,
           4 rungs, n_jobs -1; the resource is the ensemble's size when the space searches it, else the
           rows); a round counts when it ends by B
  flaml    (the HistGradientBoosting workload only) FLAML's AutoML, its histgb learner with its own
           search space, time_budget=B, its own CV (cv folds, seed)
Trial times come from each study's storage (the end of a trial), halving's from the end of its rounds,
FLAML's from its log. Afterwards, outside any timing, each variant's incumbents (a trial, round or config
that beat its best so far by its own CV score) are cross-validated on the shared folds where their own
score is not that already (halving, FLAML), and the incumbent current at B/4, B/2 and B, the model it
would hand over then, is refitted on the training part and scored on the holdout. The table: trials
by B, best shared-fold CV by B, time to the glue's best CV of the same seed, holdout at B/4, B/2, B;
medians over the seeds, then the targets, MET or MISSED.

Usage: .venv/bin/python bench/anytime.py [--only shipped,fit,noisy,hist] [--seeds 5] [--budget-scale 1.0]
           [--variants glue,sweep,halving,flaml] [--sweep-variant 'LABEL|key=value;...|--cli-arg value']...
           [--json OUT.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

# Run as a script, so Python puts this folder first on sys.path: bench.py, measure.py and report.py are found there.
import measure as m
import report
from bench import say, workload
from measure import Timed, TrialTime
from workloads import HALVING_RUNGS

VARIANTS = ("glue", "sweep", "halving", "flaml")
# What a space file says about the problem: the data, the model, the score, the space. The rest (sampler,
# pruner, n_trials, timeout, early stop, plateau, ...) is the tuner's: left out, so the sweep's defaults run.
SPACE_KEYS = ("experiment", "study_name", "model_name", "estimator", "data", "metric", "cv", "seed", "fixed",
              "params")
FIRST_SEED = 42  # the shipped space's seed: seed 1 of N is the shipped file as it is
FRACTIONS = (0.25, 0.5, 1.0)  # of B: when the handed-over model is scored on the holdout
STARTUP = 10  # TPE's random start-up trials (Optuna's n_startup_trials): the glue's first ones
N_TRIALS = 100_000  # the sweep's trial cap: --timeout ends it
FIXED_ATTR = "sweep.fixed_params"  # the study's user attr: the fixed params its trials were built with


# ---------------------------------------------------------------- the workloads

@dataclass(frozen=True)
class Workload:
    key: str  # its --only name
    title: str
    budget_s: float  # B at --budget-scale 1
    space: dict  # the space file, but its seed


def workloads() -> tuple[Workload, ...]:
    shipped = {k: v for k, v in yaml.safe_load((m.ROOT / "search_space.yaml").read_text()).items()
               if k in SPACE_KEYS}
    shipped.setdefault("study_name", "anytime-shipped")
    holdout = shipped["data"].get("holdout", 0.2)
    trees = {"type": "int", "low": 20, "high": 500, "log": True}
    searched = {**shipped["params"], "n_estimators": trees}
    fixed = {k: v for k, v in shipped.get("fixed", {}).items() if k != "n_estimators"}

    def space(key: str, dataset: str, options: dict, estimator: str, metric: str, params: dict,
              fixed: dict) -> dict:
        return {**shipped, "study_name": f"anytime-{key}", "estimator": estimator,
                "data": {"dataset": dataset, "options": options, "holdout": holdout}, "metric": metric,
                "fixed": fixed, "params": params}

    log_float = {"type": "float", "log": True}
    log_int = {"type": "int", "log": True}
    hist = {"learning_rate": {**log_float, "low": 0.01, "high": 0.5},
            "max_iter": {**log_int, "low": 20, "high": 500},
            "max_leaf_nodes": {**log_int, "low": 4, "high": 128},
            "min_samples_leaf": {**log_int, "low": 2, "high": 100},
            "l2_regularization": {**log_float, "low": 1e-6, "high": 10.0}}
    classification = {"n_features": 20, "n_informative": 8}
    return (
        Workload("shipped", "shipped (the repo's search_space.yaml)", 15, shipped),
        Workload("fit", "fit (trees searched)", 60,
                 space("fit", "make_classification", {"n_samples": 5000, **classification},
                       "GradientBoostingClassifier", "roc_auc", searched, fixed)),
        Workload("noisy", "noisy (regression)", 25,
                 space("noisy", "make_regression", {"n_samples": 2000, "n_features": 20, "noise": 40},
                       "GradientBoostingRegressor", "r2", searched, fixed)),
        Workload("hist", "hist (HistGradientBoosting)", 40,
                 space("hist", "make_classification", {"n_samples": 10000, **classification},
                       "HistGradientBoostingClassifier", "roc_auc", hist, {"random_state": 0})),
    )


@dataclass(frozen=True)
class Case:
    """One workload at one seed: its folder, its space (as written to `space_path`) and B."""

    workload: Workload
    seed: int
    budget: float
    folder: Path
    space: dict
    space_path: Path

    @property
    def fixed(self) -> dict:
        """The space file's fixed params: all a script (the glue, halving) builds its estimator with."""
        return dict(self.space.get("fixed") or {})


def write_space(path: Path, space: dict) -> Path:
    """The space file, checked by `sweep validate` (it refuses what `sweep run` would)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    checked = subprocess.run([str(m.BIN / "sweep"), "validate", "--config", str(path)], capture_output=True,
                             text=True)
    if checked.returncode != 0:
        raise SystemExit(f"sweep validate refused {path}: {(checked.stderr or checked.stdout).strip()}")
    return path


@dataclass(frozen=True)
class SweepVariant:
    """A `sweep run` variant: space-file keys set (a dotted key sets a nested one) and more CLI options."""

    label: str
    overrides: dict
    args: tuple[str, ...] = ()


AS_SHIPPED = SweepVariant("sweep", {})


def parse_sweep_variant(text: str) -> SweepVariant:
    """'LABEL|key=value;key=value|--cli-arg value': the values read as YAML, the options split as a shell does."""
    parts = text.split("|")
    if len(parts) != 3 or not parts[0].strip():
        raise ValueError(f"{text!r}: must be 'LABEL|key=value;...|--cli-arg value' (three parts)")
    label, assignments, args = (p.strip() for p in parts)
    if label in VARIANTS:
        raise ValueError(f"{text!r}: the label must not be one of {', '.join(VARIANTS)}")
    overrides = {}
    for item in filter(None, (a.strip() for a in assignments.split(";"))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{text!r}: {item!r} is not key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    return SweepVariant(label, overrides, tuple(shlex.split(args)))


def overridden(space: dict, overrides: dict) -> dict:
    space = copy.deepcopy(space)
    for dotted, value in overrides.items():
        *path, last = dotted.split(".")
        node = space
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return space


# ---------------------------------------------------------------- one variant's run

@dataclass
class Incumbent:
    at: float  # seconds after launch when it was reached
    own: float  # its score as the tool ranks it (the glue's and the sweep's: the shared-fold CV)
    params: dict  # the estimator's params as the tool would hand it over, fixed ones included
    cv: float | None = None  # the shared-fold CV (rescored for halving and FLAML)


@dataclass
class Run:
    workload: str
    seed: int
    variant: str
    budget: float
    wall_s: float = 0.0
    trials: int = 0  # by B: trials completed (+ pruned: sweep), halving's candidates, FLAML's iterations
    incumbents: list[Incumbent] = field(default_factory=list)  # reached by B, in time order
    startup: list[float] = field(default_factory=list)  # the glue: its first STARTUP trials' CV
    holdout: list[float | None] = field(default_factory=lambda: [None] * len(FRACTIONS))
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # it failed: reported as missing

    def best_cv(self) -> float | None:
        return max((i.cv for i in self.incumbents if i.cv is not None), default=None)

    def reached(self, target: float | None) -> float | None:
        """Seconds after launch when an incumbent's shared-fold CV was first >= target (None: never)."""
        if target is None:
            return None
        return min((i.at for i in self.incumbents if i.cv is not None and i.cv >= target), default=None)

    def handed_over(self, at: float) -> Incumbent | None:
        """The incumbent current at `at`: what the tool would hand over if stopped then."""
        return next((i for i in reversed(self.incumbents) if i.at <= at), None)


def improving(points: list[tuple[float, float, dict]], budget: float) -> list[Incumbent]:
    """The (seconds after launch, own score, params) points that beat every point before them, by B."""
    found: list[Incumbent] = []
    for at, own, params in sorted(points, key=lambda p: p[0]):
        if at <= budget and (not found or own > found[-1].own):
            found.append(Incumbent(at, own, params))
    return found


def from_study(run: Run, timed: Timed, trials: list[TrialTime], fixed: dict) -> None:
    """A study's run: its trials by B, its incumbents (their value is the shared-fold CV already)."""
    run.wall_s = timed.wall_s
    by_b = [t for t in m.counted(trials) if t.end is not None and t.end - timed.launched <= run.budget]
    run.trials = len(by_b)
    run.incumbents = improving([(t.end - timed.launched, t.value, {**fixed, **t.params}) for t in by_b
                                if t.state == "COMPLETE" and t.value is not None], run.budget)
    for incumbent in run.incumbents:
        incumbent.cv = incumbent.own


def run_glue(case: Case, run: Run) -> None:
    workdir = case.folder / "glue"
    journal = workdir / "optuna.journal"
    spec = {"space": str(case.space_path), "journal": str(journal), "timeout": case.budget, "fixed": case.fixed,
            "tracking_uri": f"sqlite:///{workdir}/mlflow.db"}
    timed, _ = workload("glue", spec, workdir)
    trials = m.study_trials(str(journal), case.space["study_name"])
    from_study(run, timed, trials, case.fixed)
    completed = sorted((t for t in trials if t.state == "COMPLETE"), key=lambda t: t.number)
    run.startup = [t.value for t in completed[:STARTUP]]


def run_sweep(case: Case, run: Run, variant: SweepVariant) -> None:
    workdir = case.folder / re.sub(r"[^A-Za-z0-9]+", "-", variant.label)
    workdir.mkdir(parents=True, exist_ok=True)
    space = overridden(case.space, variant.overrides)
    path = write_space(workdir / "space.yaml", space) if variant.overrides else case.space_path
    journal, name = workdir / "optuna.journal", space["study_name"]
    command = [str(m.BIN / "sweep"), "run", "--config", str(path), "--timeout", f"{case.budget:g}",
               "--n-trials", str(N_TRIALS), "-q", "--storage", str(journal),
               "--tracking-uri", f"sqlite:///{workdir}/mlflow.db", "--study-name", name,
               "--output", str(workdir / "best.json"), *variant.args]
    timed = m.checked(m.run_timed(command, workdir), f"sweep run ({variant.label})")
    added = sweep_fixed(journal, name)
    from_study(run, timed, m.study_trials(str(journal), name), {**(space.get("fixed") or {}), **added})
    if added.keys() - (space.get("fixed") or {}).keys():
        run.notes.append("fixed params the sweep added: " + ", ".join(
            f"{k}={v}" for k, v in added.items() if k not in (space.get("fixed") or {})))


def sweep_fixed(journal: Path, name: str) -> dict:
    """The fixed params the sweep built its trials with (the space's and any it adds, such as an early
    stop)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    study = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(journal))))
    return dict(study.user_attrs.get(FIXED_ATTR) or {})


def run_halving(case: Case, run: Run, rungs: int) -> None:
    workdir = case.folder / "halving"
    deadline = time.time() + case.budget  # the child is launched right after: its launch + B, within ms
    spec = {"space": str(case.space_path), "deadline": deadline, "fixed": case.fixed, "rungs": rungs}
    timed, result = workload("halving", spec, workdir)
    run.wall_s = timed.wall_s
    rounds = [r for r in result["rounds"] if r["end"] - timed.launched <= case.budget]
    run.trials = sum(r["candidates"] for r in rounds)
    run.incumbents = improving([(r["end"] - timed.launched, r["score"], r["params"]) for r in rounds], case.budget)
    plan = (f"resource {result['resource']} from {result['min_resources']} to {result['max_resources']};"
            " n_jobs -1")
    run.notes.append(f"{len(rounds)} rounds ended by B, each of {rounds[0]['candidates']} candidates, rungs"
                     f" {rounds[0]['resources']}; {plan}" if rounds else f"no round ended by B; {plan}")


def run_flaml(case: Case, run: Run) -> None:
    workdir = case.folder / "flaml"
    spec = {"space": str(case.space_path), "budget": case.budget, "log": str(workdir / "flaml.log")}
    timed, result = workload("flaml", spec, workdir)
    run.wall_s = timed.wall_s
    points = [(r["end"] - timed.launched, -r["loss"], r["params"]) for r in result["records"]]
    run.trials = sum(at <= case.budget for at, _, _ in points)
    run.incumbents = improving(points, case.budget)
    run.notes.append(f"FLAML {result['flaml']}, fit() began {result['fit_start'] - timed.launched:.1f} s after"
                     " launch (its time_budget counts from there)")


def attempt(case: Case, label: str, body: Callable[[Case, Run], None]) -> Run:
    """One variant's run; one that fails is said in a line and reported as missing."""
    run = Run(case.workload.key, case.seed, label, case.budget)
    say(f"{case.workload.key}, seed {case.seed}: {label} (B = {case.budget:g} s) ...")
    started = time.perf_counter()
    try:
        body(case, run)
    except (Exception, SystemExit) as error:  # measure.checked stops a failed child with SystemExit
        run.error = one_line(error)
        say(f"    {label} FAILED, reported as missing: {run.error}")
    else:
        say(f"    {label}: {time.perf_counter() - started:.1f} s")
    return run


def one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def bodies(w: Workload, variants: tuple[str, ...], sweeps: tuple[SweepVariant, ...],
           rungs: int) -> list[tuple[str, Callable[[Case, Run], None]]]:
    """The variants to run on a workload, in their order."""
    chosen: list[tuple[str, Callable[[Case, Run], None]]] = []
    for name in variants:
        if name == "glue":
            chosen.append(("glue", run_glue))
        elif name == "sweep":
            chosen += [(v.label, lambda c, r, v=v: run_sweep(c, r, v)) for v in (AS_SHIPPED, *sweeps)]
        elif name == "halving":
            chosen.append(("halving", lambda c, r: run_halving(c, r, rungs)))
        elif name == "flaml" and w.space["estimator"].startswith("HistGradientBoosting"):
            chosen.append(("flaml", run_flaml))
    return chosen


# ---------------------------------------------------------------- one workload at one seed

def rescore(case: Case, runs: list[Run]) -> None:
    """Outside any timing, one child process: the shared-fold CV of every incumbent lacking it, and the
    holdout score of each run's handed-over model at B/4, B/2 and B (each param set fitted once)."""
    live = [r for r in runs if r.error is None]
    to_cv = [i for r in live for i in r.incumbents if i.cv is None]
    handed = [(r, k, r.handed_over(f * case.budget)) for r in live for k, f in enumerate(FRACTIONS)]
    handed = [(r, k, i) for r, k, i in handed if i is not None]
    if not to_cv and not handed:
        return
    spec = {"space": str(case.space_path), "cv": [i.params for i in to_cv], "holdout": [i.params for *_, i in handed]}
    started = time.perf_counter()
    _, result = workload("rescore", spec, case.folder / "rescore")
    say(f"    rescoring ({len(to_cv)} CV, {len(handed)} holdout): {time.perf_counter() - started:.1f} s")
    for incumbent, value in zip(to_cv, result["cv"], strict=True):
        incumbent.cv = value
    for (run, k, _), value in zip(handed, result["holdout"], strict=True):
        run.holdout[k] = value


def run_case(root: Path, w: Workload, seed: int, options: Options) -> list[Run]:
    folder = root / w.key / f"seed{seed}"
    space, scale = {**w.space, "seed": seed}, options.scale
    chosen = bodies(w, options.variants, options.sweeps, options.halving_rungs)
    try:
        case = Case(w, seed, w.budget_s * scale, folder, space, write_space(folder / "space.yaml", space))
    except (Exception, SystemExit) as error:
        say(f"{w.key}, seed {seed}: FAILED, every variant missing: {one_line(error)}")
        return [Run(w.key, seed, label, w.budget_s * scale, error=one_line(error)) for label, _ in chosen]
    runs = [attempt(case, label, body) for label, body in chosen]
    try:
        rescore(case, runs)
    except (Exception, SystemExit) as error:
        say(f"{w.key}, seed {seed}: rescoring FAILED (halving's and FLAML's CV, every holdout missing):"
            f" {one_line(error)}")
    return runs


# ---------------------------------------------------------------- the report

def median_score(values: list[float | None]) -> float | None:
    """The median of scores where None (no model yet) counts as worse than any score."""
    if not values:
        return None
    middle = statistics.median(-math.inf if v is None else v for v in values)
    return None if math.isinf(middle) else middle


def score(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


def spread(values: list, text: Callable, none_high: bool) -> str:
    """'median (min-max)' of per-seed values; None (never, none) sorts past the end it belongs to."""
    if not values:
        return "-"
    median = m.median_or_none(values) if none_high else median_score(values)
    if len(values) == 1:
        return text(median)
    known = [v for v in values if v is not None]
    missing = None in values
    low = text(None) if not known or (missing and not none_high) else text(min(known))
    high = text(None) if not known or (missing and none_high) else text(max(known))
    return f"{text(median)} ({low}-{high})"


@dataclass
class Row:
    """A variant on a workload: its runs over the seeds (failed ones apart), each seed's time to the glue's best."""

    label: str
    runs: list[Run]
    failed: list[Run]
    reach: list[float | None]  # the seeds whose glue has a best CV

    @property
    def time_to_glue(self) -> float | None:
        return m.median_or_none(self.reach) if self.reach else None

    def holdout(self, k: int) -> float | None:
        return median_score([r.holdout[k] for r in self.runs])


def rows_of(runs: list[Run]) -> dict[str, Row]:
    glue_best = {r.seed: r.best_cv() for r in runs if r.variant == "glue" and r.error is None}
    rows: dict[str, Row] = {}
    for run in runs:
        row = rows.setdefault(run.variant, Row(run.variant, [], [], []))
        if run.error is not None:
            row.failed.append(run)
            continue
        row.runs.append(run)
        if glue_best.get(run.seed) is not None:
            row.reach.append(run.reached(glue_best[run.seed]))
    return rows


def print_workload(w: Workload, budget: float, seeds: list[int], rows: dict[str, Row], runs: list[Run]) -> None:
    data = w.space["data"]
    options = data.get("options") or {}
    shape = f" ({options['n_samples']:,} rows x {options.get('n_features', 20)})" if options else ""
    print(f"\n{w.title}: {data['dataset']}{shape}, {w.space['estimator']}, {w.space['metric']}, cv"
          f" {w.space.get('cv', 5)}; B = {budget:g} s; seeds {', '.join(map(str, seeds))}")
    header = ("variant", "trials", "best CV", "to the glue's best", "1st model", "holdout B/4", "B/2", "B", "wall")
    print("{:18} {:>14}  {:26} {:22} {:>9} {:>11} {:>7} {:>7} {:>6}".format(*header))
    for row in rows.values():
        if not row.runs:
            print(f"{row.label:18} missing in every seed")
            continue
        trials = spread([r.trials for r in row.runs], lambda v: f"{v:.0f}", True)
        best = spread([r.best_cv() for r in row.runs], score, False)
        reach = spread(row.reach, report.seconds, True)
        first = m.median_or_none([r.incumbents[0].at if r.incumbents else None for r in row.runs])
        wall = statistics.median(r.wall_s for r in row.runs)
        print(f"{row.label:18} {trials:>14}  {best:26} {reach:22} {report.seconds(first):>9}"
              f" {score(row.holdout(0)):>11} {score(row.holdout(1)):>7} {score(row.holdout(2)):>7} {wall:4.0f} s")
    print_details(rows, runs)


def print_details(rows: dict[str, Row], runs: list[Run]) -> None:
    glue = rows.get("glue")
    starts = [statistics.median(r.startup) for r in glue.runs if r.startup] if glue else []
    bests = [max((b for r in runs if r.seed == s and r.error is None and (b := r.best_cv()) is not None),
                 default=None) for s in sorted({r.seed for r in runs})]
    best = median_score(bests)
    if starts:
        report.detail(f"spread: random median {statistics.median(starts):.4f}, best {score(best)}"
                      f" (the median CV of the glue's first {STARTUP} trials, TPE's random start-up; the best CV"
                      " by B of any variant; medians over the seeds)")
    for row in rows.values():
        notes = sorted({note for r in row.runs for note in r.notes})
        for note in notes[:4]:
            report.detail(f"{row.label}: {note}")
        for run in row.failed:
            report.detail(f"{row.label}, seed {run.seed}: MISSING ({run.error})")


def ahead(sweep: Row | None, other: Row | None) -> bool | None:
    """Whether the sweep's median time to the glue's best beats the other's (never is later than any time)."""
    if sweep is None or other is None or not sweep.reach or not other.reach:
        return None
    mine, theirs = (math.inf if r.time_to_glue is None else r.time_to_glue for r in (sweep, other))
    return mine < theirs


def print_targets(results: dict[str, dict]) -> None:
    print("\nTargets (the anytime bench); medians over the seeds, every time from launch")
    for key, factor in (("fit", 0.33), ("shipped", 0.6)):
        if key in results:
            print_speed(key, results[key]["rows"], factor)
        if key == "fit" and key in results:
            print_fit_holdout(results[key]["rows"])
    verdicts = {key: ahead(r["rows"].get("sweep"), r["rows"].get("halving")) for key, r in results.items()}
    known = {k: v for k, v in verdicts.items() if v is not None}
    wins, unknown = sum(known.values()), 4 - len(known)
    ok = True if wins >= 3 else False if wins + unknown < 3 else None
    report.figure("sweep ahead of halving on time to the glue's best, workloads", f"{wins} of {len(known)}",
                  ">= 3 of 4", ok)
    compared = [f"{k}: {'ahead' if v else 'not ahead'}" for k, v in known.items()]
    if unknown:
        compared.append(f"{unknown} of 4 workloads not compared (not run, or no glue best, sweep or halving)")
    report.detail("; ".join(compared))
    if "hist" in results:
        rows = results["hist"]["rows"]
        sweep, flaml = rows.get("sweep"), rows.get("flaml")
        verdict = ahead(sweep, flaml)
        mine, theirs = ("-", "flaml's") if verdict is None else (
            report.seconds(sweep.time_to_glue), report.seconds(flaml.time_to_glue))
        report.figure("sweep ahead of flaml on time to the glue's best, hist", mine, f"< {theirs}", verdict)
        report.detail("FLAML searches its own histgb space (n_estimators 4..rows, max_leaves 4..rows,"
                      " min_samples_leaf, learning_rate 1/1024..1, max_bin, l2_regularization), not ours")


def print_speed(key: str, rows: dict[str, Row], factor: float) -> None:
    sweep, glue = rows.get("sweep"), rows.get("glue")
    if glue is None or not glue.reach or glue.time_to_glue is None:
        report.figure(f"{key}: sweep's time to the glue's best / the glue's time to its best", "-",
                      f"<= {factor:.2f}x", None)
        report.detail("not measured: the glue reached no model by B (or did not run)")
        return
    mine, own = (sweep.time_to_glue if sweep else None), glue.time_to_glue
    ratio = "never" if mine is None else f"{mine / own:.2f}x"
    report.figure(f"{key}: sweep's time to the glue's best / the glue's time to its best", ratio,
                  f"<= {factor:.2f}x", mine is not None and mine <= factor * own)
    report.detail(f"sweep {report.seconds(mine)}, glue {report.seconds(own)}")


def print_fit_holdout(rows: dict[str, Row]) -> None:
    sweep, glue = rows.get("sweep"), rows.get("glue")
    mine, theirs = (sweep.holdout(1) if sweep else None), (glue.holdout(2) if glue else None)
    ok = None if theirs is None else mine is not None and mine >= theirs
    report.figure("fit: sweep's holdout at B/2 vs the glue's at B", score(mine), f">= {score(theirs)}", ok)


# ---------------------------------------------------------------- the command

@dataclass(frozen=True)
class Options:
    only: tuple[str, ...]
    seeds: int
    scale: float
    variants: tuple[str, ...]
    sweeps: tuple[SweepVariant, ...]
    halving_rungs: int
    json_path: Path | None


def parse(argv: list[str]) -> Options:
    keys = tuple(w.key for w in workloads())
    parser = argparse.ArgumentParser(
        prog="anytime.py", description=__doc__.split("\n\n")[0],
        epilog="example (a quick look):\n  .venv/bin/python bench/anytime.py --only shipped,hist --seeds 1"
               " --budget-scale 0.3\n  --sweep-variant 'sweep hyperband|pruner=hyperband|'"
               "  --sweep-variant 'sweep 1 job||--n-jobs 1'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma-separated workloads (default: {','.join(keys)})")
    parser.add_argument("--seeds", type=int, default=5, help=f"seeds {FIRST_SEED}, {FIRST_SEED + 1}, ... (default 5)")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every B (default 1.0)")
    parser.add_argument("--variants", help=f"comma-separated (default: {','.join(VARIANTS)})")
    parser.add_argument("--sweep-variant", action="append", default=[], metavar="'LABEL|k=v;...|--opt value'",
                        help="one more `sweep run` variant (repeatable): space-file keys as YAML, CLI options")
    parser.add_argument("--halving-rungs", type=int, default=HALVING_RUNGS,
                        help=f"rungs of each halving round, factor 3 (default {HALVING_RUNGS})")
    parser.add_argument("--json", type=Path, help="also write every run's figures to this file")
    args = parser.parse_args(argv)

    def listed(text: str | None, known: tuple[str, ...], option: str) -> tuple[str, ...]:
        chosen = known if not text else tuple(p.strip() for p in text.split(",") if p.strip())
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            parser.error(f"{option}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
        return chosen

    try:
        sweeps = tuple(parse_sweep_variant(text) for text in args.sweep_variant)
    except ValueError as error:
        parser.error(f"--sweep-variant: {error}")
    if len({s.label for s in sweeps}) < len(sweeps):
        parser.error("--sweep-variant: two variants have the same label")
    if args.seeds < 1 or args.budget_scale <= 0 or args.halving_rungs < 1:
        parser.error("--seeds and --halving-rungs must be at least 1, --budget-scale above 0")
    return Options(listed(args.only, keys, "--only"), args.seeds, args.budget_scale,
                   listed(args.variants, VARIANTS, "--variants"), sweeps, args.halving_rungs, args.json)


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    began = time.perf_counter()
    print(f"machine: {m.machine()}; load average at start {m.load_avg():.1f}", flush=True)
    seeds = [FIRST_SEED + i for i in range(options.seeds)]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="sweep-anytime-") as tmp:
        for w in (w for w in workloads() if w.key in options.only):
            runs = [run for seed in seeds for run in run_case(Path(tmp), w, seed, options)]
            results[w.key] = {"workload": w, "budget": w.budget_s * options.scale, "runs": runs,
                              "rows": rows_of(runs)}
    print("\nEach table: medians over the seeds (min-max). trials and best CV (shared folds) by B; the time (from"
          " launch) an incumbent first reached the glue's best CV of its seed; 1st model: when there was a first"
          " model to hand over; holdout: the one handed over at B/4, B/2, B, refitted; wall: the child's whole run"
          " (after B: the glue's refit and register, the sweep's finalize, the trial or round running at B)")
    for result in results.values():
        print_workload(result["workload"], result["budget"], seeds, result["rows"], result["runs"])
    print_targets(results)
    if options.json_path:
        options.json_path.write_text(json.dumps(
            {k: {"budget": r["budget"], "space": r["workload"].space, "runs": [asdict(run) for run in r["runs"]]}
             for k, r in results.items()}, indent=1, default=str))
    failed = sum(run.error is not None for r in results.values() for run in r["runs"])
    print(f"\nanytime: {time.perf_counter() - began:.0f} s in all; {failed} runs missing; load average at the end"
          f" {m.load_avg():.1f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
