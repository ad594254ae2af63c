"""The bench's printed report: the table of variants, then each derived figure beside its target."""

from __future__ import annotations

from typing import Any

PRUNERS = ("median", "successive_halving")


def verdict(ok: bool | None) -> str:
    return "" if ok is None else "met" if ok else "MISSED"


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def figure(name: str, value: str, target: str, ok: bool | None) -> None:
    """One line per target: what, how much, the target, met or not; details follow indented."""
    print(f"{name:58} {value:>9}   {target:13} {verdict(ok)}")


def detail(text: str) -> None:
    print(f"    {text}")


def print_table(variants: dict[str, Any]) -> None:
    floor, target = variants["a"], variants["d"].best
    print(f"\n{'variant':42} {'wall s':>7} {'x (a)':>6} {'CPU s':>7} {'trials/min':>10} {'best CV':>8}"
          f" {'reached (d) best':>17} {'load':>5}")
    for key in sorted(variants):  # (a) first
        v = variants[key]
        print(f"{v.label:42} {v.timed.wall_s:7.1f} {v.timed.wall_s / floor.timed.wall_s:6.2f}"
              f" {v.timed.cpu_s:7.1f} {v.trials / v.timed.wall_s * 60:10.1f}"
              f" {v.best:8.5f} {seconds(v.reached(target)):>17} {v.load:5.1f}")
    print(f"""\
(d)'s final best CV score, the target of the 'reached' column: {target:.5f}.
wall and 'reached' count from each child's launch (interpreter start and imports included); 'reached'
is the end of the first completed trial scoring at least that: datetime_complete in the study for (b),
(c), (e); the end of each param set's CV for (a); for (d) estimated from cv_results_ (see rscv_variant).
CPU: user+system seconds of the child and its workers. load: 1-minute load average at the variant's end.
(c) stores its study in Optuna's RDB storage on sqlite:///optuna.db (the tutorials' pattern), logs to
sqlite:///mlflow.db, and logs each trial's model refitted on the training part; (d) is autolog's defaults.""")


def print_figures(variants: dict[str, Any], overhead: dict, parallel: dict, flat: dict | None,
                  helped: dict, size: Any) -> None:
    print("\nDerived figures against the targets of issue 4")
    print_sequential(variants, size)
    print_critical_path(overhead)
    help_s = helped["help_s"]
    figure("sweep --help wall time (median of 7)", f"{help_s:.3f} s", "< 0.5 s", help_s < 0.5)
    detail(f"the bare interpreter (python -c pass) starts in {helped['python_s']:.3f} s:"
           f" --help is {help_s / helped['python_s']:.1f}x that")
    if parallel:
        print_parallel(parallel, size)
    print_pruning(variants, size)
    if flat is not None:
        print_flatness(flat, size)


def print_sequential(variants: dict[str, Any], size: Any) -> None:
    a, b = variants["a"], variants["b"]
    phases = b.extra["phases"]
    ratio = b.timed.wall_s / a.timed.wall_s
    figure(f"sequential overhead (b)/(a), wall, {size.trials} trials", f"{ratio:.2f}", "<= 1.05",
           ratio <= 1.05)
    detail(f"(b) {b.timed.wall_s:.1f} s, (a) {a.timed.wall_s:.1f} s; (b) by phase: "
           + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))
    detail("one-off costs in that start-up, timed apart: "
           + ", ".join(f"{k} {v:.1f} s" for k, v in b.extra["fixed"].items()))
    loop = phases["trial loop"] / a.extra["loop_s"]
    figure("  trial loop alone (b) vs (a)'s fit loop", f"{loop:.2f}", "(no target)", None)
    detail(f"first trial's start to last trial's end {phases['trial loop']:.1f} s;"
           f" (a) {a.extra['loop_s']:.1f} s")


def print_critical_path(overhead: dict) -> None:
    for name, fig in overhead.items():
        limit = 40 if "server" in name else 25
        figure(f"critical path per trial, {fig['trials']} trials, {name}", f"{fig['per_trial_ms']:.1f} ms",
               f"<= {limit} ms", fig["per_trial_ms"] <= limit)
        detail(f"(loop {fig['loop_s']:.1f} s - the trials' fit time) / trials: {fig['inside_ms']:.1f} ms in"
               f" the objective around the fit, of which {fig['link_ms']:.1f} ms waiting for the MLflow"
               f" run id (runner._link_run; longest {fig['link_max_ms']:.0f} ms),")
        detail(f"{fig['between_ms']:.1f} ms between trials (callbacks, next ask). The fits took"
               f" {fig['fit_vs_floor']:.2f}x the floor's for the same"
               f" params; loop minus the floor's loop: {fig['vs_floor_ms']:.1f} ms per trial.")
        detail(f"MLflow writes still queued when the loop ended, flushed before finalize:"
               f" {fig['flush_s']:.1f} s")


def print_parallel(parallel: dict, size: Any) -> None:
    one, two = parallel[1], parallel[2]
    speedup, wall_speedup = two["loop_tpm"] / one["loop_tpm"], two["wall_tpm"] / one["wall_tpm"]
    figure(f"--n-jobs 2 vs 1, trials/min in the trial loop, {size.parallel_trials} trials", f"{speedup:.2f}x",
           ">= 1.8x", speedup >= 1.8)
    detail(f"{two['loop_tpm']:.1f} vs {one['loop_tpm']:.1f} trials/min; {wall_speedup:.2f}x over the whole"
           f" command; {parallel['trees']} trees, mean fit {one['fit_s']:.2f} s (1 job),"
           f" {two['fit_s']:.2f} s (2 jobs)")
    late = two["late_s"]
    detail("only one worker ran trials" if late is None else
           f"the second worker's first trial started {late:.2f} s after the first worker's first trial")
    detail(f"trials running at once, on average: {one['running']:.2f} (1 job), {two['running']:.2f} (2 jobs);"
           f" cores used (CPU/wall): {one['cores']:.2f}, {two['cores']:.2f}")
    before, after = parallel["ceiling"]
    detail(f"the machine's own ceiling just before and after the 2-job run: two floors at once did"
           f" {before:.2f}x and {after:.2f}x the work of one alone (2 vCPUs, shared with other jobs);"
           f" load average {one['load']:.1f}, {two['load']:.1f}")


def print_pruning(variants: dict[str, Any], size: Any) -> None:
    d = variants["d"]
    for pruner in PRUNERS:
        e = variants[f"e-{pruner}"]
        reached = e.reached(d.best)
        share = reached / d.timed.wall_s if reached is not None else None
        ok = share is not None and share <= 0.40
        figure(f"pruning ({pruner}, 2 jobs): time to (d)'s best / (d)'s wall",
               f"{share:.0%}" if share is not None else "never", "<= 40%", ok)
    other = "" if size.dataset.startswith("make_") else "; the synthetic 20,000-row set: bench.py --full"
    detail(f"on {size.dataset}; (d)'s best {d.best:.5f}, (d)'s wall {d.timed.wall_s:.1f} s{other}")


def print_flatness(flat: dict, size: Any) -> None:
    windows, (lo, hi) = flat["windows"], flat["memory"]
    first, last = windows.values()
    ratio = last["runner_ms"] / max(first["runner_ms"], 1e-9)
    figure(f"runner overhead per trial, trial {size.flat_trials} vs trial 10", f"{ratio:.2f}x", "within 2x",
           ratio <= 2)
    detail(f"one `sweep run` of {size.flat_trials} trials, the real Objective on iris (1 tree, cv 2): sweep"
           f" runs no trivial objective; it took {flat['wall_s']:.0f} s; medians of {flat['window']} trials,"
           " ms:")
    for name, w in windows.items():
        detail(f"{name:>10}: {w['overhead_ms']:5.1f} from trial start to trial start beside the fit ="
               f" TPE {w['sampler_ms']:4.1f} + waiting for the MLflow run id {w['link_ms']:5.1f}"
               f" + the rest {w['runner_ms']:5.1f} (runner, storage)")
        detail(f"{'':>10}  of it between trials (callbacks, ask) {w['between_ms']:4.1f}; fit"
               f" {w['fit_ms']:5.1f}, {w['alone_ms']:5.1f} refitted by the floor with nothing else running")
    growth = last["overhead_ms"] / max(first["overhead_ms"], 1e-9)
    between = last["between_ms"] / max(first["between_ms"], 1e-9)
    detail(f"all of it: {growth:.2f}x (TPE's cost grows with the trials by design); between trials alone:"
           f" {between:.2f}x; loop {flat['loop_s']:.0f} s, MLflow flush after it {flat['flush_s']:.1f} s")
    peak = hi["peak_rss_mb"] / lo["peak_rss_mb"]
    figure(f"peak RSS of `sweep run` at {hi['trials']} trials vs {lo['trials']}", f"{peak:.2f}x",
           "flat (<=1.25x)", peak <= 1.25)
    detail(f"{lo['peak_rss_mb']:.0f} MB -> {hi['peak_rss_mb']:.0f} MB when those trials ended,"
           f" {flat['final_peak_mb']:.0f} MB with finalize (VmHWM of the sweep process, read 5 times a"
           " second; a logger process is not counted)")
