"""make bench: our sweep against the floor and the usual alternatives, on the same data, space and budget.

Variants, each in a child process of this one, one after the other (never two at once: 2 cores):
  (a) the floor: (b)'s own param sets fitted and cross-validated by objective.evaluate, nothing else
  (b) `sweep run -q` on the embedded stores (a journal file, sqlite:///mlflow.db)
  (c) the usual glue: Optuna (TPE, same seed, sqlite storage) + MLflow's fluent API, a nested run and
      mlflow.sklearn.log_model per trial, against a sqlite tracking store
  (d) RandomizedSearchCV + mlflow.sklearn.autolog(), same folds, same n_iter, the space as scipy.stats
  (e) `sweep run` with a pruner (median and successive_halving, both reported) and --n-jobs 2
Then the derived figures, each beside its target from issue 4. The machine is shared, so every
figure is a ratio against a baseline measured in the same run, and the load average is printed.

Usage: .venv/bin/python bench/bench.py [--full] [--dataset NAME] [--rows N] [--trials N] [--table-only]
                                       [--no-flatness]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import itertools
import json
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
from report import PRUNERS

WORKLOADS = Path(__file__).resolve().with_name("workloads.py")
PARALLEL_PROBE = 8  # param sets the --n-jobs ceiling is measured on
FLAT_WINDOW = 20  # trials around each checkpoint of the flatness study (medians: single trials are noise)


@dataclass(frozen=True)
class Size:
    dataset: str
    rows: int  # synthetic datasets only
    trials: int  # the main table's budget
    trees: int
    overhead_trials: int = 100  # the critical-path runs (short trials, so the overhead shows)
    overhead_trees: int = 20
    parallel_trials: int = 16  # each of --n-jobs 1 and 2, with ~1 s trials
    flat_trials: int = 1000  # the runner's flatness study (0: skipped)
    # The critical-path and --n-jobs runs measure the runner, not the fits: small bundled data in any size.
    side_dataset: str = "breast_cancer"
    table_only: bool = False  # the table and the pruning figure only (the long --full run)


QUICK = Size(dataset="breast_cancer", rows=20_000, trials=30, trees=100, parallel_trials=24)
FULL = Size(dataset="make_classification", rows=20_000, trials=50, trees=100, parallel_trials=40)


@dataclass
class Variant:
    """One row of the table."""

    label: str
    timed: Timed
    trials: int
    best: float
    done_at: list[tuple[float, float]]  # (seconds after launch, score) per finished trial
    load: float  # 1-minute load average when it ended
    extra: dict = field(default_factory=dict)

    def reached(self, target: float) -> float | None:
        return min((t for t, score in self.done_at if score >= target), default=None)


# ---------------------------------------------------------------- running the children

def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def workload(name: str, spec: dict, workdir: Path) -> tuple[Timed, dict]:
    """Run one of workloads.py's functions in a child process; return its timing and its result."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = workdir / f"{name}-spec.json", workdir / f"{name}-result.json"
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, str(WORKLOADS), name, str(spec_path), str(result_path)]
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

    `instrumented`: the same sweep.main in workloads.py's process (the console script calls it too), with
    two timers the study cannot hold: the objective's wait for its MLflow run id, and the sampler.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    journal = workdir / "optuna.journal"
    argv = ["run", "-q", "--config", str(space), "--storage", str(journal),
            "--tracking-uri", tracking_uri or f"sqlite:///{workdir}/mlflow.db",
            "--output", str(workdir / "best.json"), *options]
    if instrumented:
        timed, result = workload("sweep", {"argv": argv}, workdir)
        waits, sampled = (by_number(result[key]) for key in ("link_wait_s", "sampler_s"))
        return SweepRun(timed, m.study_trials(str(journal), study), waits, sampled)
    timed = m.checked(m.run_timed([str(m.BIN / "sweep"), *argv], workdir), f"sweep run in {workdir.name}")
    return SweepRun(timed, m.study_trials(str(journal), study))


def by_number(seconds: dict[str, float] | None) -> dict[int, float] | None:
    """A workload's {trial number: seconds} back from JSON (None: that timer was not available)."""
    return None if seconds is None else {int(k): v for k, v in seconds.items()}


def sweep_variant(label: str, run: SweepRun) -> Variant:
    trials = m.counted(run.trials)
    done = [(t.end - run.timed.launched, t.value) for t in trials if t.state == "COMPLETE"]
    return Variant(label, run.timed, len(trials), m.best_value(trials), done, m.load_avg())


# ---------------------------------------------------------------- the main table

def main_table(root: Path, size: Size) -> dict[str, Variant]:
    """(b), then (a) on (b)'s params, then (c), (d) and the two pruned (e) runs."""
    space = m.write_space(root / "space.yaml", dataset=size.dataset, rows=size.rows, n_trials=size.trials,
                          trees=size.trees, study="bench")
    variants: dict[str, Variant] = {}
    say(f"(b) sweep run, {size.trials} trials ...")
    run_b = sweep_run(root / "b", space, "bench")
    variants["b"] = sweep_variant("(b) sweep run (journal + sqlite:)", run_b)
    variants["b"].extra["phases"] = sweep_phases(run_b)
    _, fixed = workload("fixed", {"tracking_uri": f"sqlite:///{root}/fixed/mlflow.db"}, root / "fixed")
    variants["b"].extra["fixed"] = fixed["seconds"]
    say("(a) the floor on (b)'s params ...")
    variants["a"] = floor_variant(root / "a", space, m.counted(run_b.trials))
    say("(c) Optuna + MLflow fluent glue, a model logged per trial ...")
    variants["c"] = glue_variant(root / "c", space)
    say("(d) RandomizedSearchCV + mlflow.sklearn.autolog() ...")
    variants["d"] = rscv_variant(root / "d", space)
    for pruner in PRUNERS:
        say(f"(e) sweep run, pruner {pruner}, --n-jobs 2 ...")
        pruned = m.write_space(root / f"space-{pruner}.yaml", dataset=size.dataset, rows=size.rows,
                               n_trials=size.trials, trees=size.trees, study="bench", pruner=pruner)
        run = sweep_run(root / f"e-{pruner}", pruned, "bench", "--n-jobs", "2")
        variants[f"e-{pruner}"] = sweep_variant(f"(e) sweep, {pruner}, 2 jobs", run)
    return variants


def floor_variant(workdir: Path, space: Path, trials: list[TrialTime], label: str = "(a) floor") -> Variant:
    params = [t.params for t in sorted(trials, key=lambda t: t.number)]
    timed, result = workload("floor", {"space": str(space), "params": params}, workdir)
    done = [(end - timed.launched, score) for end, score in zip(result["done"], result["scores"], strict=True)]
    variant = Variant(label, timed, len(params), max(result["scores"]), done, m.load_avg())
    variant.extra["loop_s"] = result["done"][-1] - result["loop_start"]
    variant.extra["fit_s"] = sum(result["fit_s"])
    variant.extra["fits"] = result["fit_s"]
    return variant


def glue_variant(workdir: Path, space: Path) -> Variant:
    storage = f"sqlite:///{workdir}/optuna.db"
    spec = {"space": str(space), "storage": storage, "tracking_uri": f"sqlite:///{workdir}/mlflow.db"}
    timed, _ = workload("glue", spec, workdir)
    trials = m.counted(m.study_trials(storage, "bench"))
    done = [(t.end - timed.launched, t.value) for t in trials if t.state == "COMPLETE"]
    return Variant("(c) glue: Optuna (sqlite:) + MLflow fluent", timed, len(trials), m.best_value(trials),
                   done, m.load_avg())


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


def critical_path(run: SweepRun, floor: Variant) -> dict[str, float]:
    """Per trial, in ms: the loop minus the trials' own fit time (user attr sweep.fit_time_s), and the
    loop minus the floor's fit loop of the same params (that one also catches what slows the fits:
    the sweep's MLflow logging, or an mlflow server, taking CPU or the GIL while they run)."""
    trials = m.counted(run.trials)
    start, end = m.loop_window(trials)
    n = len(trials)
    fit = sum(t.fit_s or 0.0 for t in trials)
    inside = sum(t.end - t.start for t in trials) - fit  # sampling, storage writes, waits in the objective
    waits = run.link_wait_s or {}  # none: runner._link_run is gone, so there is no such wait
    link = sum(waits.get(t.number, 0.0) for t in trials)
    return {"per_trial_ms": (end - start - fit) / n * 1000, "inside_ms": inside / n * 1000,
            "link_ms": link / n * 1000, "link_max_ms": max(waits.values(), default=0.0) * 1000,
            "between_ms": (end - start - fit - inside) / n * 1000,  # callbacks and the next ask
            "vs_floor_ms": (end - start - floor.extra["loop_s"]) / n * 1000,
            "fit_vs_floor": fit / floor.extra["fit_s"],
            "flush_s": sweep_phases(run)["MLflow flush"], "trials": n, "loop_s": end - start}


def overhead_runs(root: Path, size: Size) -> dict[str, dict]:
    """Critical-path overhead with short trials: embedded stores, then a local mlflow server."""
    space = m.write_space(root / "space-100.yaml", dataset=size.side_dataset, rows=size.rows,
                          n_trials=size.overhead_trials, trees=size.overhead_trees, study="overhead")
    figures = {}
    say(f"critical path: {size.overhead_trials} trials of {size.overhead_trees} trees, embedded stores ...")
    embedded = sweep_run(root / "o-embedded", space, "overhead", instrumented=True)
    floor = floor_variant(root / "o-floor", space, m.counted(embedded.trials))
    figures["embedded (journal + sqlite:)"] = critical_path(embedded, floor)
    say("critical path: starting a local mlflow server ...")
    with m.mlflow_server(root / "mlflow-server") as url:
        say(f"critical path: {size.overhead_trials} trials against {url} ...")
        served = sweep_run(root / "o-server", space, "overhead", tracking_uri=url, instrumented=True)
    if [t.params for t in m.counted(served.trials)] != [t.params for t in m.counted(embedded.trials)]:
        floor = floor_variant(root / "o-floor-server", space, m.counted(served.trials))
    figures["local mlflow server (journal + http:)"] = critical_path(served, floor)
    return figures


def parallel_runs(root: Path, size: Size) -> dict[str, Any]:
    """--n-jobs 2 vs 1 on a space whose trials cost ~1 s and about the same (depth, rows and features
    fixed), so the two runs compare throughput, not the params TPE happened to pick."""
    fixed, params = {"max_depth": 3, "subsample": 0.8, "max_features": None}, {
        "learning_rate": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
        "min_samples_leaf": {"type": "int", "low": 1, "high": 32, "log": True}}
    probe = m.write_space(root / "space-probe.yaml", dataset=size.side_dataset, rows=size.rows, n_trials=1,
                          trees=50, study="probe", fixed=fixed, params=params)
    _, calibration = workload("calibrate", {"space": str(probe)}, root / "calibrate")
    trees = max(10, min(2000, round(1.0 / calibration["s_per_tree"])))
    space = m.write_space(root / "space-parallel.yaml", dataset=size.side_dataset, rows=size.rows,
                          n_trials=size.parallel_trials, trees=trees, study="parallel", fixed=fixed,
                          params=params)
    figures: dict[str, Any] = {"trees": trees}
    for jobs in (1, 2):
        say(f"--n-jobs {jobs}: {size.parallel_trials} trials of {trees} trees (~1 s each) ...")
        run = sweep_run(root / f"p-{jobs}", space, "parallel", "--n-jobs", str(jobs))
        trials = m.counted(run.trials)
        start, end = m.loop_window(trials)
        figures[jobs] = {"loop_tpm": len(trials) / (end - start) * 60,
                         "wall_tpm": len(trials) / run.timed.wall_s * 60,
                         "fit_s": statistics.mean(t.fit_s for t in trials), "load": m.load_avg(),
                         "cores": run.timed.cpu_s / run.timed.wall_s,  # what the run really got
                         "running": sum(t.end - t.start for t in trials) / (end - start),  # trials at once
                         "late_s": worker_lag(trials)}
        if jobs == 1:  # the machine's share for us changes by the minute: measured right before and after
            probe_trials = trials[:PARALLEL_PROBE]
            figures["ceiling"] = [parallel_ceiling(root / "before", space, probe_trials)]
    figures["ceiling"].append(parallel_ceiling(root / "after", space, probe_trials))
    return figures


def worker_lag(trials: list[TrialTime]) -> float | None:
    """How long after the first worker's first trial the last worker started its first one (None: only
    one worker ran trials)."""
    firsts: dict[str, float] = {}
    for trial in sorted(trials, key=lambda t: t.start):
        firsts.setdefault(trial.worker, trial.start)
    return max(firsts.values()) - min(firsts.values()) if len(firsts) > 1 else None


def parallel_ceiling(root: Path, space: Path, trials: list[TrialTime]) -> float:
    """How much faster the machine does two floors' work at once than one after the other, right now: the
    ceiling of any --n-jobs 2 speedup here (2 vCPUs may share a physical core; other jobs share both)."""
    say(f"--n-jobs ceiling: the floor on {len(trials)} of those param sets alone, then two at once ...")
    alone = floor_variant(root / "ceiling-alone", space, trials).extra["loop_s"]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        pair = list(pool.map(lambda i: floor_variant(root / f"ceiling-pair-{i}", space, trials), (0, 1)))
    return 2 * alone / max(v.extra["loop_s"] for v in pair)


def flatness_run(root: Path, size: Size) -> dict[str, Any] | None:
    """Per-trial overhead near trial 10 and trial N of one `sweep run`, and its peak RSS at both. sweep runs
    no trivial objective, so the trials are the real TrialRunner on iris with 1 tree and cv 2."""
    if not size.flat_trials:
        return None
    n = size.flat_trials
    space = m.write_space(root / "space-flat.yaml", dataset="iris", rows=0, n_trials=n, trees=1, study="flat",
                          cv=2)
    say(f"flatness: one study of {n} trials (iris, 1 tree, cv 2) ...")
    run = sweep_run(root / "flat", space, "flat", instrumented=True)
    trials = sorted(m.counted(run.trials), key=lambda t: t.number)
    w = FLAT_WINDOW
    around = {f"trial {k}": trials[first:first + w + 1] for k, first in ((10, 10), (n, len(trials) - w - 1))}
    measured = [t for group in around.values() for t in group[:-1]]
    refitted = floor_variant(root / "flat-floor", space, measured).extra["fits"]
    alone = dict(zip([t.number for t in measured], refitted, strict=True))
    windows = {name: flat_window(group, run, alone) for name, group in around.items()}
    memory = [{"trials": k, "peak_rss_mb": run.timed.peak_rss_at(trials[k - 1].end)}
              for k in (10, len(trials))]
    phases = sweep_phases(run)
    return {"windows": windows, "memory": memory, "flush_s": phases["MLflow flush"],
            "wall_s": run.timed.wall_s, "loop_s": phases["trial loop"],
            "final_peak_mb": run.timed.peak_rss_mb, "window": w, "timed_sampler": run.sampler_s is not None}


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

def parse(argv: list[str]) -> Size:
    parser = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0],
                                     epilog="example:\n  .venv/bin/python bench/bench.py --full --trials 40",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="a synthetic 20,000-row set and more trials")
    parser.add_argument("--dataset", help="a bundled or synthetic dataset of sweep's (default: breast_cancer;"
                        " --full: make_classification)")
    parser.add_argument("--rows", type=int, help="rows of a synthetic dataset (default: 20000)")
    parser.add_argument("--trials", type=int, help="the main table's trial budget (default: 30; --full: 50)")
    parser.add_argument("--no-flatness", action="store_true", help="skip the 1,000-trial flatness study")
    parser.add_argument("--table-only", action="store_true",
                        help="the table and the pruning figure only: no critical-path, --n-jobs or flatness"
                        " runs")
    args = parser.parse_args(argv)
    size = FULL if args.full else QUICK
    chosen = {"dataset": args.dataset, "rows": args.rows, "trials": args.trials,
              "flat_trials": 0 if args.no_flatness else None, "table_only": args.table_only or None}
    return dataclasses.replace(size, **{k: v for k, v in chosen.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    size = parse(sys.argv[1:] if argv is None else argv)
    began = time.perf_counter()
    print(f"machine: {m.machine()}; load average at start {m.load_avg():.1f}")
    rows = f" ({size.rows} rows)" if size.dataset.startswith("make_") else ""
    print(f"size: {size.dataset}{rows}, {size.trials} trials of {size.trees} trees, the repo's space and"
          f" seed; critical-path and --n-jobs runs on {size.side_dataset}, flatness on iris")
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        root = Path(tmp)
        helped = help_time(root)
        variants = main_table(root, size)
        overhead = {} if size.table_only else overhead_runs(root, size)
        parallel = {} if size.table_only else parallel_runs(root, size)
        flat = None if size.table_only else flatness_run(root, size)
    report.print_table(variants)
    report.print_figures(variants, overhead, parallel, flat, helped, size)
    print(f"\nbench: {time.perf_counter() - began:.0f} s in all; load average at the end {m.load_avg():.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
