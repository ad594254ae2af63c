"""The bench's printed report: a table per workload, then each figure beside its target, MET or MISSED."""

from __future__ import annotations

from typing import Any

NAME_WIDTH = 70


def verdict(ok: bool | None) -> str:
    return "" if ok is None else "MET" if ok else "MISSED"


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def figure(name: str, value: str, target: str, ok: bool | None) -> None:
    """One line per target: what, how much, the target, MET or MISSED; details follow indented."""
    print(f"{name:{NAME_WIDTH}} {value:>9}   {target:13} {verdict(ok)}".rstrip())


def detail(text: str) -> None:
    print(f"    {text}")


def phases(parts: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())


def print_all(results: dict[str, Any]) -> None:
    for result in results.get("workloads", {}).values():
        print_workload(result)
    print("\nTargets (issue 10); every ratio is against a baseline measured in this same run")
    for result in results.get("workloads", {}).values():
        print_vs_glue(result)
    for result in results.get("workloads", {}).values():
        print_vs_floor(result, results.get("fixed", {}))
    if "overhead" in results:
        print_critical_path(results["overhead"])
    for parallel in results.get("parallel", []):
        print_parallel(parallel)
    for result in results.get("workloads", {}).values():
        if "e" in result["rows"]:
            print_pruning(result)
    if "flat" in results:
        print_flatness(results["flat"])
    if "help" in results or "flat" in results:
        print("\nOther figures (issue 4)")
    if "help" in results:
        helped = results["help"]
        help_s = helped["help_s"]
        figure("sweep --help wall time (median of 7)", f"{help_s:.3f} s", "< 0.5 s", help_s < 0.5)
        detail(f"the bare interpreter (python -c pass) starts in {helped['python_s']:.3f} s:"
               f" --help is {help_s / helped['python_s']:.1f}x that")
    if "flat" in results:
        print_memory(results["flat"])


# ---------------------------------------------------------------- the workloads' tables

def print_workload(result: dict[str, Any]) -> None:
    w, rows, repeats = result["workload"], result["rows"], result["repeats"]
    floor, glue, target = rows["a"], rows["f"], rows["d"].best
    data = f"{w.dataset} ({w.rows:,} rows x 20)" if w.dataset.startswith("make_") else w.dataset
    order = " ".join(k for k in rows if k != "c")
    print(f"\n{w.title}: {data}, {w.trials} trials of {w.trees} trees, the repo's space (cv 3, seed 42);"
          f" wall: the median of {repeats} runs, run in turn ({order})")
    print(f"{'variant':42} {'wall s':>7} {'x (a)':>6} {'x (f)':>6}  {'runs, wall s':20} {'CPU s':>6}"
          f" {'trials':>6} {'best CV':>8} {'reached (d) best':>16} {'load':>5}")
    for row in rows.values():
        walls = " ".join(f"{v.timed.wall_s:.1f}" for v in row.runs)
        print(f"{row.label:42} {row.wall:7.1f} {row.wall / floor.wall:6.2f} {row.wall / glue.wall:6.2f}"
              f"  {walls:20} {row.cpu:6.1f} {row.trials:6d} {row.best:8.5f}"
              f" {seconds(row.reached(target)):>16} {row.load:5.1f}")
    b, f = rows["b"].median_run, glue.median_run
    detail(f"(b) by phase (its median run): {phases(b.extra['phases'])}")
    detail(f"(f) by phase (its median run): {phases(f.extra['phases'])}")
    detail(f"(a)'s fit loop {floor.median_run.extra['loop_s']:.1f} s; (b)'s trial loop"
           f" {b.extra['phases']['trial loop']:.1f} s, (f)'s {f.extra['phases']['trial loop']:.1f} s")
    same = result["same_params"]
    detail(f"param sets: an untimed `sweep run` ({result['draw_s']:.0f} s, also the warm-up) drew them for (a) and"
           f" (f); (b)'s {len(same)} runs drew the same ones: "
           + ("all" if all(same) else f"NOT runs {[i + 1 for i, s in enumerate(same) if not s]}"))
    detail(f"(d)'s best CV score, the target of 'reached': {target:.5f}; 'reached' counts from launch to the end"
           " of the first trial scoring at least that (for (d) estimated from cv_results_, erring early)")
    if "c" in rows:
        detail("(c) ran once (a model logged per trial is slow: its wall is that run's), on the same param"
               " sets, Optuna on sqlite:///optuna.db (the tutorials' pattern), a skops model per trial")


# ---------------------------------------------------------------- the targets

def print_vs_glue(result: dict[str, Any]) -> None:
    w, rows = result["workload"], result["rows"]
    ratio = rows["b"].wall / rows["f"].wall
    figure(f"sweep / (f) glue, wall, {w.title} ({w.trials} trials of {w.trees} trees)", f"{ratio:.2f}",
           f"<= {w.vs_glue:.2f}", ratio <= w.vs_glue)
    detail(f"(b) {rows['b'].wall:.1f} s, (f) {rows['f'].wall:.1f} s (medians of {result['repeats']});"
           " (f) samples nothing (its params are enqueued): it skips the sampler's cost, which (b) pays")


def print_vs_floor(result: dict[str, Any], fixed: dict[str, float]) -> None:
    w, rows = result["workload"], result["rows"]
    if w.vs_floor is None:
        return
    ratio = rows["b"].wall / rows["a"].wall
    figure(f"sweep / floor, wall, {w.title}", f"{ratio:.2f}", f"<= {w.vs_floor:.2f}", ratio <= w.vs_floor)
    b = rows["b"].median_run
    loop = b.extra["phases"]["trial loop"] / rows["a"].median_run.extra["loop_s"]
    detail(f"(b) {rows['b'].wall:.1f} s, (a) {rows['a'].wall:.1f} s; (b)'s trial loop alone is {loop:.2f}x"
           " (a)'s fit loop")
    if fixed:
        detail("one-off costs in (b)'s start-up, timed apart: " + phases(fixed))


def print_critical_path(overhead: dict) -> None:
    for name, fig in overhead.items():
        limit = 15 if "server" in name else 10
        figure(f"critical path per trial, {fig['trials']} trials, {name}", f"{fig['per_trial_ms']:.1f} ms",
               f"<= {limit} ms", fig["per_trial_ms"] <= limit)
        link = (f"of which {fig['link_ms']:.1f} ms waiting for the MLflow run id (runner._link_run; longest"
                f" {fig['link_max_ms']:.0f} ms)" if fig["link_timed"] else
                "no wait for the MLflow run id (runner._link_run is gone: 0 ms)")
        detail(f"(loop {fig['loop_s']:.1f} s - the trials' fit time) / trials: {fig['inside_ms']:.1f} ms in"
               f" the objective around the fit, {link},")
        detail(f"{fig['between_ms']:.1f} ms between trials (callbacks, next ask). The fits took"
               f" {fig['fit_vs_floor']:.2f}x the floor's for the same"
               f" params; loop minus the floor's loop: {fig['vs_floor_ms']:.1f} ms per trial.")
        detail(f"MLflow writes still queued when the loop ended, flushed before finalize:"
               f" {fig['flush_s']:.1f} s")


def print_parallel(parallel: dict) -> None:
    row, one, two = parallel["row"], parallel[1], parallel[2]
    speedup, wall_speedup = two["loop_tpm"] / one["loop_tpm"], two["wall_tpm"] / one["wall_tpm"]
    figure(f"--n-jobs 2 vs 1, trials/min in the trial loop, {row.name}", f"{speedup:.2f}x", ">= 1.8x",
           speedup >= 1.8)
    data = f"{row.dataset} {row.rows:,} x 20" if row.rows else row.dataset
    detail(f"{row.trials} trials of {parallel['trees']} trees on {data}, cv {row.cv}:"
           f" {two['loop_tpm']:.1f} vs {one['loop_tpm']:.1f} trials/min; {wall_speedup:.2f}x over the whole"
           f" command; mean fit {one['fit_s']:.2f} s (1 job), {two['fit_s']:.2f} s (2 jobs)")
    late = two["late_s"]
    detail("only one worker ran trials" if late is None else
           f"the second worker's first trial started {late:.2f} s after the first worker's first trial")
    detail(f"trials running at once, on average: {one['running']:.2f} (1 job), {two['running']:.2f} (2 jobs);"
           f" cores used (CPU/wall): {one['cores']:.2f}, {two['cores']:.2f}")
    before, after = parallel["ceiling"]
    detail(f"the machine's own ceiling just before and after the 2-job run: two floors at once did"
           f" {before:.2f}x and {after:.2f}x the work of one alone (2 vCPUs, shared with other jobs);"
           f" load average {one['load']:.1f}, {two['load']:.1f}")


def print_pruning(result: dict[str, Any]) -> None:
    w, rows = result["workload"], result["rows"]
    d, e = rows["d"], rows["e"]
    reached = e.reached(d.best)
    share = reached / d.wall if reached is not None else None
    figure(f"pruning (median, 2 jobs): time to (d)'s best / (d)'s wall, {w.title}",
           f"{share:.0%}" if share is not None else "never", "<= 40%", share is not None and share <= 0.40)
    each = ", ".join(seconds(v.reached(d.best)) for v in e.runs)
    detail(f"(d)'s best {d.best:.5f}, (d)'s wall {d.wall:.1f} s; (e) reached it after {each} (median"
           f" {seconds(reached)}), each run from launch, {w.trials} trials as (d); (e)'s best"
           f" {e.best:.5f}, wall {e.wall:.1f} s")


def print_flatness(flat: dict) -> None:
    windows, n = flat["windows"], flat["trials"]
    first, last = windows.values()
    ratio = last["runner_ms"] / max(first["runner_ms"], 1e-9)
    figure(f"runner's own cost per trial, trial {n} vs trial 10 (TPE apart)", f"{ratio:.2f}x", "within 1.25x",
           ratio <= 1.25)
    detail(f"one `sweep run` of {n} trials, the real objective on iris (1 tree, cv 2): sweep"
           f" runs no trivial objective; it took {flat['wall_s']:.0f} s; medians of {flat['window']} trials,"
           " ms:")
    link = "waiting for the MLflow run id" if flat["timed_link"] else "run id wait (_link_run gone)"
    for name, w in windows.items():
        detail(f"{name:>10}: {w['overhead_ms']:5.1f} from trial start to trial start beside the fit ="
               f" TPE {w['sampler_ms']:4.1f} + {link} {w['link_ms']:5.1f}"
               f" + the rest {w['runner_ms']:5.1f} (runner, storage)")
        detail(f"{'':>10}  of it between trials (callbacks, ask) {w['between_ms']:4.1f}; fit"
               f" {w['fit_ms']:5.1f}, {w['alone_ms']:5.1f} refitted by the floor with nothing else running")
    growth = last["overhead_ms"] / max(first["overhead_ms"], 1e-9)
    tpe = last["sampler_ms"] / max(first["sampler_ms"], 1e-9)
    between = last["between_ms"] / max(first["between_ms"], 1e-9)
    detail(f"TPE's own growth (by design, reported apart): {tpe:.2f}x; all of it: {growth:.2f}x; between trials"
           f" alone: {between:.2f}x; loop {flat['loop_s']:.0f} s, MLflow flush after it {flat['flush_s']:.1f} s")
    if not flat["timed_sampler"]:
        detail("studies.make_sampler is gone from the sweep code: TPE's time is not split out (0 above)")


def print_memory(flat: dict) -> None:
    lo, hi = flat["memory"]
    peak = hi["peak_rss_mb"] / lo["peak_rss_mb"]
    figure(f"peak RSS of `sweep run` at {hi['trials']} trials vs {lo['trials']}", f"{peak:.2f}x",
           "flat (<=1.25x)", peak <= 1.25)
    detail(f"{lo['peak_rss_mb']:.0f} MB -> {hi['peak_rss_mb']:.0f} MB when those trials ended,"
           f" {flat['final_peak_mb']:.0f} MB with finalize (VmHWM of the sweep process, read 5 times a"
           " second; a logger process is not counted)")
