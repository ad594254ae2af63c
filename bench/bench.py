"""make bench: `sweep run` against the floor and what a user would write instead, on three workloads.

Each workload is one search space; on it, every variant is a fresh child process of this one, timed
from launch to exit, run `--repeats` times (3) in turn (a b f d, a b f d, a b f d; never two at once:
2 cores), and the median wall time is reported:
  (a) the floor: the param sets `sweep run` draws, fitted and cross-validated by objective.evaluate
      on the sweep's folds, nothing else
  (b) `sweep run -q` on the embedded stores (a journal file, sqlite:///mlflow.db)
  (f) the glue a user writes instead: Optuna on a journal file + optuna-integration's MLflowCallback,
      nested child runs under one parent run, the same param sets (enqueued), the same folds, and the
      same end state (refit, holdout score, model logged, registered, aliased)
  (d) RandomizedSearchCV + mlflow.sklearn.autolog(), same folds, same n_iter, the space as scipy.stats
  (e) fit-dominated only: `sweep run` with the median pruner and --n-jobs 2 (the pruning target)
  (c) once, on the quick workload: the per-trial log_model glue (a nested run and a model per trial)
The workloads: quick (the shipped space on breast_cancer, 30 trials of 100 trees), short trials (200
trials of 10 trees), fit-dominated (make_classification, ~10 trials, the floor ~20-30 s). Then the
critical path per trial (embedded stores, a local mlflow server), --n-jobs 2 vs 1 (GradientBoosting-
Classifier, HistGradientBoostingRegressor), the runner's flatness over 1000 trials, `sweep --help`.
Every figure is a ratio against a baseline measured in the same run (the machine is shared), printed
beside its target from issue 10 with MET or MISSED.

Usage: .venv/bin/python bench/bench.py [--only PART[,PART...]] [--repeats N] [--fit-rows N] [--fit-trials N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as a script, so Python puts this folder first on sys.path: measure.py and report.py are found there.
import measure as m
import report
from measure import Timed, TrialTime

WORKLOADS_PY = Path(__file__).resolve().with_name("workloads.py")
PARALLEL_PROBE = 8  # param sets the --n-jobs ceiling is measured on
FLAT_WINDOW = 20  # trials around each checkpoint of the flatness study (medians: single trials are noise)
FIT_ROWS = 10_000  # the fit-dominated workload's rows: its floor takes ~20-30 s on the project's machine
STUDY = "bench"


@dataclass(frozen=True)
class Workload:
    key: str  # its --only name
    title: str
    dataset: str
    rows: int  # synthetic datasets only
    trials: int
    trees: int
    vs_glue: float  # target: sweep / (f), wall
    vs_floor: float | None  # target: sweep / floor, wall (None: no target)
    pruned: bool = False  # also (e), a pruned sweep with 2 jobs, in the rotation: the pruning target


def workloads(fit_rows: int, fit_trials: int) -> tuple[Workload, ...]:
    return (Workload("quick", "quick", "breast_cancer", 0, 30, 100, vs_glue=0.80, vs_floor=1.25),
            Workload("short", "short trials", "breast_cancer", 0, 200, 10, vs_glue=0.70, vs_floor=None),
            Workload("fit", "fit-dominated", "make_classification", fit_rows, fit_trials, 100, vs_glue=1.00,
                     vs_floor=1.05, pruned=True))


@dataclass(frozen=True)
class ParallelRow:
    """One --n-jobs 2 vs 1 row: a space whose trials cost about the same (so the two runs compare
    throughput, not the params TPE happened to pick)."""

    name: str
    estimator: str
    dataset: str
    rows: int
    trials: int
    trees: int | None  # None: calibrated to ~1 s trials
    fixed: dict
    params: dict
    cv: int = 3


LEARNING_RATE = {"type": "float", "low": 0.01, "high": 0.5, "log": True}
PARALLEL_ROWS = (
    ParallelRow("GradientBoostingClassifier", "GradientBoostingClassifier", "breast_cancer", 0, 24, None,
                {"max_depth": 3, "subsample": 0.8, "max_features": None},
                {"learning_rate": LEARNING_RATE,
                 "min_samples_leaf": {"type": "int", "low": 1, "high": 32, "log": True}}),
    ParallelRow("HistGradientBoostingRegressor", "HistGradientBoostingRegressor", "make_regression", 5000, 12,
                100, {"early_stopping": False},
                {"learning_rate": LEARNING_RATE,
                 "min_samples_leaf": {"type": "int", "low": 5, "high": 50, "log": True}}),
)

PARTS = ("quick", "short", "fit", "per-trial-glue", "critical-path", "n-jobs", "flatness", "help")


@dataclass
class Variant:
    """One run of one variant."""

    label: str
    timed: Timed
    trials: int
    best: float
    done_at: list[tuple[float, float]]  # (seconds after launch, score) per finished trial
    load: float  # 1-minute load average when it ended
    extra: dict = field(default_factory=dict)

    def reached(self, target: float) -> float | None:
        return min((t for t, score in self.done_at if score >= target), default=None)


@dataclass
class Repeated:
    """The runs of one variant on one workload: a row of its table, medians over the runs."""

    label: str
    runs: list[Variant]

    @property
    def wall(self) -> float:
        return statistics.median(v.timed.wall_s for v in self.runs)

    @property
    def cpu(self) -> float:
        return statistics.median(v.timed.cpu_s for v in self.runs)

    @property
    def trials(self) -> int:
        return self.runs[0].trials

    @property
    def best(self) -> float:
        return statistics.median(v.best for v in self.runs)

    @property
    def load(self) -> float:
        return max(v.load for v in self.runs)

    @property
    def median_run(self) -> Variant:
        return sorted(self.runs, key=lambda v: v.timed.wall_s)[(len(self.runs) - 1) // 2]

    def reached(self, target: float) -> float | None:
        return m.median_or_none([v.reached(target) for v in self.runs])


# ---------------------------------------------------------------- running the children

def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def workload(name: str, spec: dict, workdir: Path) -> tuple[Timed, dict]:
    """Run one of workloads.py's functions in a child process; return its timing and its result."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = workdir / f"{name}-spec.json", workdir / f"{name}-result.json"
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, str(WORKLOADS_PY), name, str(spec_path), str(result_path)]
    timed = m.checked(m.run_timed(command, workdir), f"workload {name}")
    return timed, json.loads(result_path.read_text())


@dataclass(frozen=True)
class SweepRun:
    timed: Timed
    trials: list[TrialTime]  # every trial of the study, from the journal file
    link_wait_s: dict[int, float] | None = None  # instrumented runs: each trial's wait for its run id
    sampler_s: dict[int, float] | None = None  # instrumented runs: each trial's time in the sampler


def sweep_run(workdir: Path, space: Path, study: str, *options: str, tracking_uri: str = "",
              instrumented: bool = False) -> SweepRun:
    """`sweep run -q` in its own folder on its own stores; the study's trials read back afterwards.

    `instrumented`: the same cli.main in workloads.py's process (the console script calls it too), with
    two timers the study cannot hold: the objective's wait for its MLflow run id, and the sampler.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    journal = workdir / "optuna.journal"
    # One process unless the variant says otherwise: these figures are the cost per trial against
    # the floor's serial fits (the default, one process per core, is the anytime bench's subject).
    jobs = [] if "--n-jobs" in options else ["--n-jobs", "1"]
    argv = ["run", "-q", "--config", str(space), "--storage", str(journal),
            "--tracking-uri", tracking_uri or f"sqlite:///{workdir}/mlflow.db",
            "--output", str(workdir / "best.json"), *jobs, *options]
    if instrumented:
        timed, result = workload("sweep", {"argv": argv}, workdir)
        waits, sampled = (by_number(result[key]) for key in ("link_wait_s", "sampler_s"))
        return SweepRun(timed, m.study_trials(str(journal), study), waits, sampled)
    timed = m.checked(m.run_timed([str(m.BIN / "sweep"), *argv], workdir), f"sweep run in {workdir.name}")
    return SweepRun(timed, m.study_trials(str(journal), study))


def by_number(seconds: dict[str, float] | None) -> dict[int, float] | None:
    """A workload's {trial number: seconds} back from JSON (None: that timer was not available)."""
    return None if seconds is None else {int(k): v for k, v in seconds.items()}


def params_of(trials: list[TrialTime]) -> list[dict]:
    """The trials' param sets in trial order: what the floor and the glue are given."""
    return [t.params for t in sorted(trials, key=lambda t: t.number)]


def sweep_variant(label: str, run: SweepRun) -> Variant:
    trials = m.counted(run.trials)
    done = [(t.end - run.timed.launched, t.value) for t in trials if t.state == "COMPLETE"]
    return Variant(label, run.timed, len(trials), m.best_value(trials), done, m.load_avg())


def floor_variant(workdir: Path, space: Path, params: list[dict], label: str = "(a) floor",
                  threads: int | None = None) -> Variant:
    timed, result = workload("floor", {"space": str(space), "params": params, "threads": threads}, workdir)
    done = [(end - timed.launched, score) for end, score in zip(result["done"], result["scores"], strict=True)]
    variant = Variant(label, timed, len(params), max(result["scores"]), done, m.load_avg())
    variant.extra["loop_s"] = result["done"][-1] - result["loop_start"]
    variant.extra["fit_s"] = sum(result["fit_s"])
    variant.extra["fits"] = result["fit_s"]
    return variant


def glue_variant(workdir: Path, space: Path, params: list[dict]) -> Variant:
    """(f): Optuna (journal file) + MLflowCallback, on the given param sets; its trials read from its journal."""
    journal = workdir / "optuna.journal"
    spec = {"space": str(space), "journal": str(journal), "tracking_uri": f"sqlite:///{workdir}/mlflow.db",
            "params": params}
    timed, result = workload("glue", spec, workdir)
    trials = m.counted(m.study_trials(str(journal), STUDY))
    done = [(t.end - timed.launched, t.value) for t in trials if t.state == "COMPLETE"]
    variant = Variant("(f) glue: Optuna journal + MLflowCallback", timed, len(trials), m.best_value(trials),
                      done, m.load_avg())
    start, end = m.loop_window(trials)
    launched = timed.launched
    variant.extra["phases"] = {
        "start-up": start - launched, "trial loop": end - start,
        "refit, log, register, alias": result["registered"] - end,
        "interpreter exit": timed.wall_s - (result["registered"] - launched)}
    return variant


def per_trial_glue_variant(workdir: Path, space: Path, params: list[dict]) -> Variant:
    """(c): the fluent API with a model logged per trial, Optuna on sqlite (the tutorials' pattern)."""
    storage = f"sqlite:///{workdir}/optuna.db"
    spec = {"space": str(space), "storage": storage, "tracking_uri": f"sqlite:///{workdir}/mlflow.db",
            "params": params}
    timed, _ = workload("glue_per_trial", spec, workdir)
    trials = m.counted(m.study_trials(storage, STUDY))
    done = [(t.end - timed.launched, t.value) for t in trials if t.state == "COMPLETE"]
    return Variant("(c) per-trial log_model glue", timed, len(trials), m.best_value(trials), done,
                   m.load_avg())


def rscv_variant(workdir: Path, space: Path) -> Variant:
    """RandomizedSearchCV keeps no finishing time per candidate, and autolog's child runs are all written
    after the search (their times are the logging's), so a candidate's end is estimated from cv_results_:
    the search's start plus the running sum of (mean fit + mean score time) x folds. That leaves out
    joblib's dispatch between fits, so it errs early: in (d)'s favour."""
    spec = {"space": str(space), "tracking_uri": f"sqlite:///{workdir}/mlflow.db"}
    timed, result = workload("rscv", spec, workdir)
    elapsed, done = result["search_start"] - timed.launched, []
    for fit_s, score_s, value in zip(result["fit_s"], result["score_s"], result["values"], strict=True):
        elapsed += (fit_s + score_s) * result["n_splits"]
        done.append((elapsed, value))
    variant = Variant("(d) RandomizedSearchCV + autolog", timed, len(done), result["best"], done,
                      m.load_avg())
    variant.extra["search_s"] = result["search_end"] - result["search_start"]
    return variant


# ---------------------------------------------------------------- the workloads' tables

LABELS = {"a": "(a) floor", "b": "(b) sweep run (journal + sqlite:)", "f": "(f) glue: Optuna + MLflowCallback",
          "d": "(d) RandomizedSearchCV + autolog", "e": "(e) sweep, median pruner, 2 jobs",
          "c": "(c) per-trial log_model glue"}


def run_workload(root: Path, w: Workload, repeats: int, per_trial_glue: bool) -> dict[str, Any]:
    """An untimed `sweep run` draws the param sets (and warms the caches); then every variant `repeats`
    times, in turn; on the quick workload, (c) once after them."""
    folder = root / w.key
    folder.mkdir(parents=True, exist_ok=True)
    space = m.write_space(folder / "space.yaml", dataset=w.dataset, rows=w.rows, n_trials=w.trials,
                          trees=w.trees, study=STUDY)
    say(f"{w.title}: an untimed sweep run draws the param sets (and warms the caches) ...")
    drawn = sweep_run(folder / "draw", space, STUDY)
    params = params_of(m.counted(drawn.trials))
    order = ["a", "b", "f", "d"] + (["e"] if w.pruned else [])
    pruned_space = m.write_space(folder / "space-median.yaml", dataset=w.dataset, rows=w.rows,
                                 n_trials=w.trials, trees=w.trees, study=STUDY, pruner="median") if w.pruned else space
    runs: dict[str, list[Variant]] = {key: [] for key in order}
    same_params = []
    for r in range(repeats):
        for key in order:
            say(f"{w.title}, round {r + 1} of {repeats}: {LABELS[key]} ...")
            workdir = folder / f"{key}{r}"
            if key == "a":
                variant = floor_variant(workdir, space, params)
            elif key == "b":
                run = sweep_run(workdir, space, STUDY)
                variant = sweep_variant(LABELS["b"], run)
                variant.extra["phases"] = sweep_phases(run)
                same_params.append(params_of(m.counted(run.trials)) == params)
            elif key == "f":
                variant = glue_variant(workdir, space, params)
            elif key == "d":
                variant = rscv_variant(workdir, space)
            else:
                variant = sweep_variant(LABELS["e"], sweep_run(workdir, pruned_space, STUDY, "--n-jobs", "2"))
            say(f"    {variant.timed.wall_s:.1f} s")
            runs[key].append(variant)
    rows = {key: Repeated(LABELS[key], variants) for key, variants in runs.items()}
    if per_trial_glue:
        say(f"{w.title}: {LABELS['c']}, once (a model logged per trial: slow) ...")
        rows["c"] = Repeated(LABELS["c"] + " (1 run)", [per_trial_glue_variant(folder / "c", space, params)])
    return {"workload": w, "rows": rows, "repeats": repeats, "same_params": same_params,
            "draw_s": drawn.timed.wall_s}


# ---------------------------------------------------------------- the derived figures

def sweep_phases(run: SweepRun) -> dict[str, float]:
    """Where `sweep run`'s wall time goes, from the study's times and the moments its stderr lines came."""
    start, end = m.loop_window(m.counted(run.trials))
    launched, wall = run.timed.launched, run.timed.wall_s
    flushed = run.timed.seconds_at("study '") or end - launched  # said once the queued writes are done
    registered = run.timed.seconds_at("registered ") or run.timed.seconds_at("best trial ") or wall
    wrote = run.timed.seconds_at("wrote ") or registered  # the --output file: the command's last word
    return {"start-up": start - launched, "trial loop": end - start,
            "MLflow flush": flushed - (end - launched),
            "finalize (refit, log, register)": registered - flushed,
            "parent run closed, best written": wrote - registered, "interpreter exit": wall - wrote}


def critical_path(run: SweepRun, floor: Variant) -> dict[str, Any]:
    """Per trial, in ms: the loop minus the trials' own fit time (user attr sweep.fit_time_s), and the
    loop minus the floor's fit loop of the same params (that one also catches what slows the fits:
    the sweep's MLflow logging, or an mlflow server, taking CPU or the GIL while they run)."""
    trials = m.counted(run.trials)
    start, end = m.loop_window(trials)
    n = len(trials)
    fit = sum(t.fit_s or 0.0 for t in trials)
    inside = sum(t.end - t.start for t in trials) - fit  # sampling, storage writes, waits in the objective
    waits = run.link_wait_s or {}  # None: runner._link_run is gone, so trials wait for no run id
    link = sum(waits.get(t.number, 0.0) for t in trials)
    return {"per_trial_ms": (end - start - fit) / n * 1000, "inside_ms": inside / n * 1000,
            "link_ms": link / n * 1000, "link_max_ms": max(waits.values(), default=0.0) * 1000,
            "link_timed": run.link_wait_s is not None,
            "between_ms": (end - start - fit - inside) / n * 1000,  # callbacks and the next ask
            "vs_floor_ms": (end - start - floor.extra["loop_s"]) / n * 1000,
            "fit_vs_floor": fit / floor.extra["fit_s"],
            "flush_s": sweep_phases(run)["MLflow flush"], "trials": n, "loop_s": end - start}


def overhead_runs(root: Path) -> dict[str, dict]:
    """Critical-path overhead with short trials (100 trials of 20 trees on breast_cancer): embedded
    stores, then a local mlflow server."""
    trials, trees = 100, 20
    space = m.write_space(root / "space-100.yaml", dataset="breast_cancer", rows=0, n_trials=trials,
                          trees=trees, study="overhead")
    figures = {}
    say(f"critical path: {trials} trials of {trees} trees, embedded stores ...")
    embedded = sweep_run(root / "o-embedded", space, "overhead", instrumented=True)
    floor = floor_variant(root / "o-floor", space, params_of(m.counted(embedded.trials)))
    figures["embedded (journal + sqlite:)"] = critical_path(embedded, floor)
    say("critical path: starting a local mlflow server ...")
    with m.mlflow_server(root / "mlflow-server") as url:
        say(f"critical path: {trials} trials against {url} ...")
        served = sweep_run(root / "o-server", space, "overhead", tracking_uri=url, instrumented=True)
    if params_of(m.counted(served.trials)) != params_of(m.counted(embedded.trials)):
        floor = floor_variant(root / "o-floor-server", space, params_of(m.counted(served.trials)))
    figures["local mlflow server (journal + http:)"] = critical_path(served, floor)
    return figures


def parallel_runs(root: Path, row: ParallelRow) -> dict[str, Any]:
    """--n-jobs 2 vs 1 on one row's space; the machine's own ceiling measured right before and after."""
    def space_file(name: str, n_trials: int, trees: int, study: str) -> Path:
        return m.write_space(root / name, dataset=row.dataset, rows=row.rows, n_trials=n_trials, trees=trees,
                             study=study, fixed=row.fixed, params=row.params, cv=row.cv, estimator=row.estimator)

    trees = row.trees
    if trees is None:
        probe = space_file("space-probe.yaml", 1, 50, "probe")
        _, calibration = workload("calibrate", {"space": str(probe)}, root / "calibrate")
        trees = max(10, min(2000, round(1.0 / calibration["s_per_tree"])))
    space = space_file("space-parallel.yaml", row.trials, trees, "parallel")
    figures: dict[str, Any] = {"trees": trees, "row": row}
    for jobs in (1, 2):
        say(f"--n-jobs {jobs}, {row.name}: {row.trials} trials of {trees} trees ...")
        run = sweep_run(root / f"p-{jobs}", space, "parallel", "--n-jobs", str(jobs))
        trials = m.counted(run.trials)
        start, end = m.loop_window(trials)
        figures[jobs] = {"loop_tpm": len(trials) / (end - start) * 60,
                         "wall_tpm": len(trials) / run.timed.wall_s * 60,
                         "fit_s": statistics.mean(t.fit_s or 0.0 for t in trials), "load": m.load_avg(),
                         "cores": run.timed.cpu_s / run.timed.wall_s,  # what the run really got
                         "running": sum(t.end - t.start for t in trials) / (end - start),  # trials at once
                         "late_s": worker_lag(trials)}
        if jobs == 1:  # the machine's share for us changes by the minute: measured right before and after
            probe_params = params_of(trials)[:PARALLEL_PROBE]
            figures["ceiling"] = [parallel_ceiling(root / "before", space, probe_params)]
    figures["ceiling"].append(parallel_ceiling(root / "after", space, probe_params))
    return figures


def worker_lag(trials: list[TrialTime]) -> float | None:
    """How long after the first worker's first trial the last worker started its first one (None: only
    one worker ran trials)."""
    firsts: dict[str, float] = {}
    for trial in sorted(trials, key=lambda t: t.start):
        firsts.setdefault(trial.worker, trial.start)
    return max(firsts.values()) - min(firsts.values()) if len(firsts) > 1 else None


def parallel_ceiling(root: Path, space: Path, params: list[dict]) -> float:
    """How much faster the machine does two floors' work at once than one after the other, right now: the
    ceiling of any --n-jobs 2 speedup here (2 vCPUs may share a physical core; other jobs share both).
    Threads as `sweep run` gives them: the one alone gets the libraries' default, each of the two gets
    the cores divided by 2 (what matters for HistGradientBoosting's OpenMP)."""
    say(f"--n-jobs ceiling: the floor on {len(params)} of those param sets alone, then two at once ...")
    alone = floor_variant(root / "ceiling-alone", space, params).extra["loop_s"]
    half = max(1, len(os.sched_getaffinity(0)) // 2)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        pair = list(pool.map(lambda i: floor_variant(root / f"ceiling-pair-{i}", space, params, threads=half),
                             (0, 1)))
    return 2 * alone / max(v.extra["loop_s"] for v in pair)


def flatness_run(root: Path, n: int) -> dict[str, Any]:
    """Per-trial overhead near trial 10 and trial N of one `sweep run`, and its peak RSS at both. sweep runs
    no trivial objective, so the trials are the real TrialRunner on iris with 1 tree and cv 2."""
    space = m.write_space(root / "space-flat.yaml", dataset="iris", rows=0, n_trials=n, trees=1, study="flat",
                          cv=2)
    say(f"flatness: one study of {n} trials (iris, 1 tree, cv 2) ...")
    run = sweep_run(root / "flat", space, "flat", instrumented=True)
    trials = sorted(m.counted(run.trials), key=lambda t: t.number)
    w = FLAT_WINDOW
    around = {f"trial {k}": trials[first:first + w + 1] for k, first in ((10, 10), (n, len(trials) - w - 1))}
    measured = [t for group in around.values() for t in group[:-1]]
    refitted = floor_variant(root / "flat-floor", space, params_of(measured)).extra["fits"]
    alone = dict(zip(sorted(t.number for t in measured), refitted, strict=True))
    windows = {name: flat_window(group, run, alone) for name, group in around.items()}
    memory = [{"trials": k, "peak_rss_mb": run.timed.peak_rss_at(trials[k - 1].end)}
              for k in (10, len(trials))]
    phases = sweep_phases(run)
    return {"windows": windows, "memory": memory, "flush_s": phases["MLflow flush"], "trials": n,
            "wall_s": run.timed.wall_s, "loop_s": phases["trial loop"],
            "final_peak_mb": run.timed.peak_rss_mb, "window": w, "timed_sampler": run.sampler_s is not None,
            "timed_link": run.link_wait_s is not None}


def flat_window(group: list[TrialTime], run: SweepRun, alone: dict[int, float]) -> dict[str, float]:
    """Medians over consecutive trials, in ms: from one trial's start to the next one's, beside the fit,
    split into the sampler, the wait for the MLflow run id, and the rest (the runner's and the storage's)."""
    sampler, link = run.sampler_s or {}, run.link_wait_s or {}
    parts = [(b.start - a.start - (a.fit_s or 0.0), sampler.get(a.number, 0.0), link.get(a.number, 0.0),
              b.start - a.end) for a, b in itertools.pairwise(group)]

    def median(values: Any) -> float:
        return statistics.median(values) * 1000

    return {"overhead_ms": median(p[0] for p in parts), "sampler_ms": median(p[1] for p in parts),
            "link_ms": median(p[2] for p in parts), "runner_ms": median(p[0] - p[1] - p[2] for p in parts),
            "between_ms": median(p[3] for p in parts),
            "fit_ms": median(t.fit_s or 0.0 for t in group[:-1]),
            "alone_ms": median(alone[t.number] for t in group[:-1])}


def help_time(root: Path) -> dict[str, float]:
    """`sweep --help` against the bare interpreter's start, medians of 7 (one run is noise here)."""
    bare = m.median_wall([sys.executable, "-c", "pass"], root, 7)
    return {"help_s": m.median_wall([str(m.BIN / "sweep"), "--help"], root, 7), "python_s": bare}


# ---------------------------------------------------------------- the command

@dataclass(frozen=True)
class Options:
    parts: tuple[str, ...]
    repeats: int
    fit_rows: int
    fit_trials: int
    flat_trials: int


def parse(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench.py", description=__doc__.split("\n\n")[0],
        epilog="parts: " + ", ".join(PARTS) + "\nexample (a quick look while developing):\n"
               "  .venv/bin/python bench/bench.py --only quick --repeats 1",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated parts to run (default: all of them)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant per workload (default 3)")
    parser.add_argument("--fit-rows", type=int, default=FIT_ROWS,
                        help=f"rows of the fit-dominated workload (default {FIT_ROWS})")
    parser.add_argument("--fit-trials", type=int, default=10, help="trials of the fit-dominated workload (10)")
    parser.add_argument("--flat-trials", type=int, default=1000, help="trials of the flatness study (1000)")
    args = parser.parse_args(argv)
    parts = PARTS if not args.only else tuple(p.strip() for p in args.only.split(",") if p.strip())
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--only: unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    if args.repeats < 1:
        parser.error("--repeats: must be at least 1")
    return Options(parts, args.repeats, args.fit_rows, args.fit_trials, args.flat_trials)


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    began = time.perf_counter()
    print(f"machine: {m.machine()}; load average at start {m.load_avg():.1f}", flush=True)
    took: dict[str, float] = {}
    failed: dict[str, str] = {}

    def timed_part(name: str, function: Any, *args: Any) -> Any:
        """One part, timed; a part that fails is reported and the others still run (None: it failed)."""
        started = time.perf_counter()
        try:
            return function(*args)
        except (Exception, SystemExit) as error:  # checked() stops a part with SystemExit
            failed[name] = str(error).strip() or type(error).__name__
            say(f"{name} FAILED, going on with the other parts: {failed[name]}")
            return None
        finally:
            took[name] = time.perf_counter() - started

    results: dict[str, Any] = {"workloads": {}, "parallel": []}
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        root = Path(tmp)
        if "help" in options.parts:
            results["help"] = timed_part("help", help_time, root)
        chosen = [w for w in workloads(options.fit_rows, options.fit_trials) if w.key in options.parts]
        if chosen:
            fixed = timed_part("one-off costs", workload, "fixed",
                               {"tracking_uri": f"sqlite:///{root}/fixed/mlflow.db"}, root / "fixed")
            results["fixed"] = fixed[1]["seconds"] if fixed else {}
        for w in chosen:
            glue_c = w.key == "quick" and "per-trial-glue" in options.parts
            results["workloads"][w.key] = timed_part(w.title, run_workload, root, w, options.repeats, glue_c)
        if "critical-path" in options.parts:
            results["overhead"] = timed_part("critical path", overhead_runs, root / "overhead")
        if "n-jobs" in options.parts:
            results["parallel"] = [timed_part(f"--n-jobs {row.name}", parallel_runs, root / f"parallel-{i}", row)
                                   for i, row in enumerate(PARALLEL_ROWS)]
        if "flatness" in options.parts:
            results["flat"] = timed_part("flatness", flatness_run, root / "flatness", options.flat_trials)
    results["workloads"] = {k: v for k, v in results["workloads"].items() if v is not None}
    results["parallel"] = [p for p in results["parallel"] if p is not None]
    report.print_all({k: v for k, v in results.items() if v is not None})
    for name, why in failed.items():
        print(f"\nbench: {name} FAILED, its figures are missing:\n{why}")
    print("\nbench: time per part: " + ", ".join(f"{name} {s:.0f} s" for name, s in took.items()))
    print(f"bench: {time.perf_counter() - began:.0f} s in all; load average at the end {m.load_avg():.1f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
