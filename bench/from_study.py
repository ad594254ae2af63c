"""make bench, the `--from` row (issue 11): does continuing a study pay, measured in trials.

Per seed (the config's `seed:` key), in a temp folder of its own (a journal file, sqlite tracking):
  old    the shipped search_space.yaml as it is, 20 trials;
  then learning_rate's high is widened from 0.5 to 1.0 (log scale from 0.01): the old studies' best
  trials lie in the upper half of its log range on every seed (their learning_rate is printed, so
  each run shows whether that still holds), while their max_depth reaches its high 6 on seed 5 only
  (of 1-5); 1.0 is a rate GradientBoosting takes. The best trial's learning_rate, and how many new
  trials drew one above 0.5, say whether the widened part is where the gain came from. On the
  widened space:
  cont   `sweep run --from old`: the old trials (all fit: the widened range holds the old one), then up
         to --cap new trials;
  fresh  a new study without --from, up to 20 + --cap trials.
From each study's trials in order, the new trials it took until its best reached the old best (>=), and
until it beat it (>): for cont, "reach" is 0 by construction (the old best is one of its carried trials),
so "beat" is the figure that says whether the carried trials help TPE; "never" within the cap counts as
cap + 1 in the medians. Every run is `sweep run -q` in a child process, one at a time (2 cores).

Usage: .venv/bin/python bench/from_study.py [--seeds 1,2,3,4,5] [--cap 25]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))  # after bench/: studies and keys
OLD_TRIALS = 20
WIDENED, LOW, OLD_HIGH, NEW_HIGH = "learning_rate", 0.01, 0.5, 1.0
TOP = 5  # the old study's best trials whose learning_rate is shown
CAP = 25  # new trials of the continued study at most: 5 seeds in ~10 min on the project's loaded machine


@dataclass(frozen=True)
class Study:
    """One finished study, as the figures need it: the score of each trial in order, carried ones apart."""

    carried: list[float]
    new: list[float | None]  # None: a trial that did not complete (it still cost a trial)
    wall_s: float
    best_rate: float  # the best trial's learning_rate: inside the old range, or in the widened part?
    above: int  # new trials that drew a learning_rate above the old high

    @property
    def best(self) -> float:
        return max([*self.carried, *(v for v in self.new if v is not None)])


@dataclass(frozen=True)
class Seed:
    seed: int
    old_best: float
    top: list[float]  # learning_rate of the old study's TOP best trials, best first
    old_wall_s: float
    cont: Study
    fresh: Study


def write_space(folder: Path, seed: int, widened: bool) -> Path:
    """The shipped space with this seed (and learning_rate's range widened): the file a user would edit."""
    space = yaml.safe_load((ROOT / "search_space.yaml").read_text())
    param = space["params"][WIDENED]
    if (param["low"], param["high"]) != (LOW, OLD_HIGH):
        raise SystemExit(f"bench/from_study.py: the shipped {WIDENED} is {param['low']}-{param['high']}, not"
                         f" {LOW}-{OLD_HIGH}: say again which range to widen and why")
    space["seed"] = seed
    if widened:
        param["high"] = NEW_HIGH
    path = folder / ("widened.yaml" if widened else "shipped.yaml")
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def sweep_run(folder: Path, space: Path, study: str, n_trials: int, *extra: str) -> float:
    """`sweep run -q` in a child process, on the folder's stores; its wall time."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "run", "-q", "--config", str(space),
         "--storage", str(folder / "optuna.journal"), "--tracking-uri", f"sqlite:///{folder}/mlflow.db",
         "--study-name", study, "--n-trials", str(n_trials), *extra],
        cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench/from_study.py: `sweep run` of study {study!r} exited {done.returncode}:\n"
                         f"{done.stderr}")
    return time.perf_counter() - started


def trials(folder: Path, study: str) -> list[Any]:
    import optuna

    from gbsweep import storages

    storage = storages.open_storage(str(folder / "optuna.journal"))
    return optuna.load_study(study_name=study, storage=storage).trials


def load(folder: Path, study: str, wall_s: float) -> Study:
    from gbsweep import keys

    carried, new, above = [], [], 0
    done = trials(folder, study)
    for trial in done:
        if keys.FROM_TRIAL in trial.user_attrs:
            carried.append(trial.value)
        else:
            new.append(trial.value if trial.state.name == "COMPLETE" else None)
            above += trial.params.get(WIDENED, 0.0) > OLD_HIGH
    best = max((t for t in done if t.state.name == "COMPLETE"), key=lambda t: t.value)
    return Study(carried, new, wall_s, best.params[WIDENED], above)


def run_seed(root: Path, seed: int, cap: int) -> Seed:
    folder = root / f"seed-{seed}"
    folder.mkdir()
    shipped, widened = write_space(folder, seed, False), write_space(folder, seed, True)
    say(f"seed {seed}: old, {OLD_TRIALS} trials of the shipped space ...")
    old_wall_s = sweep_run(folder, shipped, "old", OLD_TRIALS)
    old = [t for t in trials(folder, "old") if t.state.name == "COMPLETE"]
    ranked = sorted(old, key=lambda t: t.value, reverse=True)
    fitting = sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials(folder, "old"))  # all: a widening
    say(f"seed {seed}: cont, --from old ({fitting} to carry) + up to {cap} new trials ...")
    cont = load(folder, "cont", sweep_run(folder, widened, "cont", fitting + cap, "--from", "old"))
    if len(cont.carried) != fitting:
        raise SystemExit(f"bench/from_study.py: seed {seed}: {len(cont.carried)} trials carried, not the {fitting}"
                         f" finished ones: the widened {WIDENED} should hold them all")
    say(f"seed {seed}: fresh, up to {OLD_TRIALS + cap} trials of the widened space ...")
    fresh = load(folder, "fresh", sweep_run(folder, widened, "fresh", OLD_TRIALS + cap))
    return Seed(seed, ranked[0].value, [t.params[WIDENED] for t in ranked[:TOP]], old_wall_s, cont, fresh)


# ---------------------------------------------------------------- the figures

def trials_to(study: Study, target: float, beat: bool) -> int | None:
    """New trials until the study's best reaches (>=) or beats (>) the target; 0: a carried trial does;
    None: never within its trials."""
    def good(value: float | None) -> bool:
        return value is not None and (value > target if beat else value >= target)

    if any(good(v) for v in study.carried):
        return 0
    return next((i for i, v in enumerate(study.new, 1) if good(v)), None)


def shown(count: int | None) -> str:
    return "never" if count is None else str(count)


def columns(study: Study) -> str:
    return f"{study.best:7.5f} {study.best_rate:6.2f} {study.above:6d} {len(study.new):3d}"


def median(counts: list[int | None], cap: int) -> float:
    return statistics.median(cap + 1 if c is None else c for c in counts)


def say(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def print_report(results: list[Seed], cap: int, took_s: float) -> None:
    print(f"\n--from: the shipped space (GradientBoostingClassifier on breast_cancer, cv 3), {OLD_TRIALS} trials"
          f" (old); then {WIDENED}'s high widened {OLD_HIGH} -> {NEW_HIGH}: cont = --from old + up to {cap} new trials,"
          f" fresh = up to {OLD_TRIALS + cap} trials; reach, beat: new trials until the best is >= or > the old best,"
          f" never = not within the cap; its lr: the best trial's {WIDENED}; lr>{OLD_HIGH}: new trials in the"
          " widened part, of all new trials")
    print(f"{'':41} {' cont (--from old) ':-^45}  {' fresh ':-^37}")
    print(f"{'seed':>4} {'old best':>8}  {'old top-' + str(TOP) + ' ' + WIDENED:26}"
          f" {'carried':>7} {'reach':>5} {'beat':>5} {'best':>7} {'its lr':>6} {'lr>' + str(OLD_HIGH):>6} {'of':>3}"
          f"  {'reach':>5} {'beat':>5} {'best':>7} {'its lr':>6} {'lr>' + str(OLD_HIGH):>6} {'of':>3}"
          f"  {'wall s old/cont/fresh':>21}")
    for r in results:
        counts = [trials_to(s, r.old_best, beat) for s in (r.cont, r.fresh) for beat in (False, True)]
        top = " ".join(f"{v:.2f}" for v in r.top)
        walls = f"{r.old_wall_s:.1f}/{r.cont.wall_s:.1f}/{r.fresh.wall_s:.1f}"
        print(f"{r.seed:>4} {r.old_best:8.5f}  {top:26} {len(r.cont.carried):7d}"
              f" {shown(counts[0]):>5} {shown(counts[1]):>5} {columns(r.cont)}"
              f"  {shown(counts[2]):>5} {shown(counts[3]):>5} {columns(r.fresh)}  {walls:>21}")
    print_targets(results, cap)
    print(f"\nbench/from_study.py: {took_s:.0f} s in all")


def print_targets(results: list[Seed], cap: int) -> None:
    for what, beat in (("reach", False), ("beat", True)):
        cont = median([trials_to(r.cont, r.old_best, beat) for r in results], cap)
        fresh = median([trials_to(r.fresh, r.old_best, beat) for r in results], cap + OLD_TRIALS)
        verdict = "MET" if cont < fresh else "MISSED"
        print(f"continued vs fresh, new trials to {what} the old best (median of {len(results)} seeds):"
              f" {cont:g} vs {fresh:g}  {verdict}")
    print(f"    'reach' is 0 for every continued study by construction: the old best is one of its carried"
          f" trials. 'beat' is the figure: how soon TPE, started from the {OLD_TRIALS} carried trials, finds"
          " better params in the widened space than the old study had, against a fresh study that must find"
          f" its way from nothing (never = cap + 1: {cap + 1} continued, {cap + OLD_TRIALS + 1} fresh)")


def main() -> int:
    parser = argparse.ArgumentParser(prog="from_study.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2,3,4,5", help="the config's seed: per repetition (1,2,3,4,5)")
    parser.add_argument("--cap", type=int, default=CAP, help=f"new trials of the continued study at most ({CAP})")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sweep-bench-carry-") as tmp:
        results = [run_seed(Path(tmp), seed, args.cap) for seed in seeds]
    print_report(results, args.cap, time.perf_counter() - began)
    return 0


if __name__ == "__main__":
    sys.exit(main())
