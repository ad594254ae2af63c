"""make chaos: repeated random SIGKILLs on a sweep's processes, then a count of what survived.

Runs `sweep run --n-jobs 2` and a `sweep worker` on one study (a journal file, which processes on
one machine share, and a sqlite tracking store, both in a temp folder). Every 2-5 s it SIGKILLs a
random one of: the `sweep run` main process, its recorder (the forked process that does all MLflow
writes), its forked worker (also one orphaned by an earlier kill of `sweep run`, which runs on), the
`sweep worker`, or the worker's recorder. A killed `sweep run` or `sweep worker` is restarted with
the same command (it resumes); a recorder or a forked worker is replaced by nobody until its
`sweep run` is restarted. After the kills, `sweep run` runs to its end undisturbed (again, if it
ended with an error: its recorder may have been killed), then the stores are read.

Last line: `chaos: 20 kills, 60 of 60 trials counted, lost 0, duplicated child runs 0, runs left
RUNNING 0, parent runs 1, model versions 1`; exit code 1 when a figure is not what it must be.

Usage: .venv/bin/python bench/chaos.py [--kills 20] [--trials 60] [--trees 400] [--seed N] [--keep]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STUDY = "chaos"
SPACE = """\
experiment: chaos
study_name: chaos
estimator: GradientBoostingClassifier
data: {{dataset: breast_cancer}}
metric: roc_auc
cv: 3
seed: 1
sampler: tpe
n_trials: {trials}
fixed: {{n_estimators: {trees}, random_state: 0}}
params:
  learning_rate: {{type: float, low: 0.05, high: 0.5, log: true}}
  max_depth: {{type: int, low: 2, high: 4}}
  subsample: {{type: float, low: 0.5, high: 1.0, step: 0.1}}
"""
POLL_S = 0.2
FINAL_RUNS = 3  # undisturbed `sweep run`s at the end: a killed recorder makes one end with exit 1
FINAL_TIMEOUT_S = 900
LEFTOVER_WAIT_S = 30  # an orphaned process ends once it sees its sweep gone


@dataclass(frozen=True)
class Victim:
    kind: str
    pid: int
    start: str  # the process's start time: a pid reused by another process is not the same victim


@dataclass
class Tally:
    kills: collections.Counter = field(default_factory=collections.Counter)
    restarts: collections.Counter = field(default_factory=collections.Counter)
    exits: list = field(default_factory=list)  # (command, exit code) of each end that was not a kill


def start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return ""
    return "" if fields[0] == "Z" else fields[19]  # a zombie is as good as gone


def children(pid: int) -> list[int]:
    """pid's running child processes (a killed one stays a zombie until its parent reaps it)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return sorted(pid for pid in set(found) if start_time(pid))


def is_recorder(pid: int) -> bool:
    """The recorder ignores SIGINT and SIGTERM (a signal to the process group must not cut its
    writes); the forked workers handle them."""
    try:
        with open(f"/proc/{pid}/status") as status:
            ignored = next(int(line.split()[1], 16) for line in status if line.startswith("SigIgn:"))
    except (OSError, StopIteration):
        return False
    wanted = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
    return ignored & wanted == wanted


class Sweep:
    """The two commands of the sweep, restarted when they end, and the processes they fork."""

    def __init__(self, folder: Path, kills: int) -> None:
        self.folder, self.kills_wanted = folder, kills
        config = folder / "chaos.yaml"
        stores = ["--config", str(config), "--storage", str(folder / "optuna.journal"),
                  "--tracking-uri", f"sqlite:///{folder}/mlflow.db"]
        self.commands = {
            "sweep run": [sys.executable, str(ROOT / "sweep.py"), "run", "-q", "--n-jobs", "2", *stores],
            "sweep worker": [sys.executable, str(ROOT / "sweep.py"), "worker", "-q", "--threads", "1",
                             "--wait", "120", *stores],
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.forked: dict[int, str] = {}  # forked workers seen (pid -> start), orphans included
        self.killed: set[int] = set()
        self.finished: set[int] = set()  # ended with exit 0: not restarted
        self.tally = Tally()

    def start(self, name: str) -> None:
        log = open(self.folder / f"{name.replace(' ', '-')}.log", "a")  # noqa: SIM115 - the child holds it
        log.write(f"---- start at {time.strftime('%H:%M:%S')}\n")
        log.flush()
        self.procs[name] = subprocess.Popen(self.commands[name], cwd=self.folder, stdout=log, stderr=log)

    def restart_ended(self, names: tuple[str, ...] = ("sweep run", "sweep worker")) -> str | None:
        """Restart the commands that ended; return 'done' when `sweep run` ended with exit 0."""
        for name in names:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is None or proc.pid in self.finished:
                continue
            if proc.pid in self.killed:
                self.killed.discard(proc.pid)
            else:
                self.tally.exits.append((name, proc.returncode))
                if proc.returncode == 0:  # `sweep run` is done; a worker found no open slot
                    self.finished.add(proc.pid)
                    if name == "sweep run":
                        return "done"
                    continue
            self.tally.restarts[name] += 1
            self.start(name)
        return None

    def victims(self) -> list[Victim]:
        """Every process of the sweep that runs now, by kind."""
        found: list[Victim] = []
        for name, recorder_kind in (("sweep run", "recorder"), ("sweep worker", "worker's recorder")):
            proc = self.procs[name]
            if proc.poll() is not None:
                continue
            found.append(Victim(name, proc.pid, start_time(proc.pid)))
            kids = children(proc.pid)
            found += [Victim(recorder_kind, pid, start_time(pid)) for pid in kids if is_recorder(pid)]
            if name == "sweep run":
                self.forked.update({pid: start_time(pid) for pid in kids
                                    if pid not in self.forked and not is_recorder(pid)})
        for pid, start in list(self.forked.items()):
            if start_time(pid) != start or not start:
                del self.forked[pid]
            else:
                found.append(Victim("forked worker", pid, start))
        return found

    def kill_one(self, rng: random.Random) -> Victim | None:
        by_kind = collections.defaultdict(list)
        for victim in self.victims():
            by_kind[victim.kind].append(victim)
        if not by_kind:
            return None
        victim = rng.choice(by_kind[rng.choice(sorted(by_kind))])
        if start_time(victim.pid) != victim.start:
            return None  # it ended on its own meanwhile
        os.kill(victim.pid, signal.SIGKILL)
        for proc in self.procs.values():
            if proc.pid == victim.pid:
                self.killed.add(proc.pid)
                proc.wait()  # gone before anyone looks at it (a kill is not an exit of its own)
        self.tally.kills[victim.kind] += 1
        return victim

    def leftovers(self) -> list[int]:
        """Processes of the sweep still running after it ended (orphaned workers or recorders):
        every process whose command line names the temp folder."""
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if str(self.folder) in cmdline.read_text() and start_time(int(cmdline.parent.name)):
                    found.append(int(cmdline.parent.name))
            except OSError:
                pass
        return found


def chaos_phase(sweep: Sweep, rng: random.Random, gap: tuple[float, float]) -> None:
    """Kill a random process every gap seconds until the wanted number of kills; restart what ends."""
    sweep.start("sweep run")
    sweep.start("sweep worker")
    done = 0
    while done < sweep.kills_wanted:
        deadline = time.monotonic() + rng.uniform(*gap)
        while time.monotonic() < deadline:
            if sweep.restart_ended() == "done":
                raise SystemExit(f"chaos: the sweep finished after {done} kills, before"
                                 f" {sweep.kills_wanted}: give it more --trials or --trees.")
            sweep.victims()  # notes forked workers before their `sweep run` is killed
            time.sleep(POLL_S)
        victim = sweep.kill_one(rng)
        if victim is not None:
            done += 1
            print(f"kill {done:2d}: {victim.kind} (pid {victim.pid}) at {time.strftime('%H:%M:%S')}", flush=True)


def final_phase(sweep: Sweep) -> bool:
    """Let `sweep run` end undisturbed (run it again if it ended with an error); True when it ended with 0."""
    sweep.restart_ended(("sweep worker",))  # the last kill's victim, when it was the worker
    for attempt in range(FINAL_RUNS):
        if attempt and sweep.procs["sweep run"].returncode != 0:
            print(f"chaos: `sweep run` ended with exit code {sweep.procs['sweep run'].returncode};"
                  " running it again", flush=True)
        if sweep.restart_ended(("sweep run",)) == "done":  # restarts it unless it ended with 0
            return True
        try:
            sweep.procs["sweep run"].wait(FINAL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"chaos: `sweep run` did not end in {FINAL_TIMEOUT_S} s", flush=True)
            return False
    code = sweep.procs["sweep run"].returncode
    sweep.tally.exits.append(("sweep run", code))
    return code == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--trials", type=int, default=120)
    parser.add_argument("--trees", type=int, default=400, help="n_estimators of every trial (its length)")
    parser.add_argument("--min-gap", type=float, default=2.0)
    parser.add_argument("--max-gap", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=None, help="the kills' random seed (default: random)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder with the stores and logs")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    folder = Path(tempfile.mkdtemp(prefix="sweep-chaos-"))
    (folder / "chaos.yaml").write_text(SPACE.format(trials=args.trials, trees=args.trees))
    print(f"chaos: seed {seed}, stores and logs in {folder}", flush=True)
    sweep = Sweep(folder, args.kills)
    started = time.monotonic()
    try:
        chaos_phase(sweep, random.Random(seed), (args.min_gap, args.max_gap))
        ended = final_phase(sweep)
        if sweep.procs["sweep worker"].poll() is None:
            sweep.procs["sweep worker"].wait(FINAL_TIMEOUT_S)
    finally:
        for proc in sweep.procs.values():
            if proc.poll() is None:
                proc.kill()
    print(f"chaos: {time.monotonic() - started:.0f} s; kills {dict(sweep.tally.kills)};"
          f" restarts {dict(sweep.tally.restarts)}; exits (not killed) {sweep.tally.exits}", flush=True)
    ok = report(sweep, folder, args.trials, ended)
    if args.keep or not ok:
        print(f"chaos: kept {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if ok else 1


def report(sweep: Sweep, folder: Path, n_trials: int, ended: bool) -> bool:
    """Count from the stores, print the figures; True when each is what it must be."""
    deadline = time.monotonic() + LEFTOVER_WAIT_S
    while (left := sweep.leftovers()) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    figures = count(str(folder / "optuna.journal"), f"sqlite:///{folder}/mlflow.db")
    for line in figures.notes:
        print(f"chaos: {line}")
    print(f"chaos: trials without a child run {figures.missing_runs}, child runs whose status is not"
          f" the trial's {figures.wrong_status}, processes left running {len(left)}")
    print(f"chaos: {sum(sweep.tally.kills.values())} kills, {figures.counted} of {n_trials} trials counted,"
          f" lost {figures.lost}, duplicated child runs {figures.duplicated}, runs left RUNNING"
          f" {figures.running_runs}, parent runs {figures.parents}, model versions {figures.versions}")
    return (ended and figures.counted == n_trials and figures.lost == 0 and figures.duplicated == 0
            and figures.running_runs == 0 and figures.parents == 1 and figures.versions == 1
            and figures.missing_runs == 0 and figures.wrong_status == 0 and not left)


# ---------------------------------------------------------------- what the stores say

@dataclass
class Figures:
    counted: int  # COMPLETE + PRUNED trials: what --n-trials counts
    lost: int  # trials cut short whose params never reached a counted trial (through their retries)
    duplicated: int  # child runs beyond the first of a trial number
    running_runs: int  # parent and child runs still RUNNING
    parents: int  # runs without mlflow.parentRunId
    versions: int  # versions of the registered model
    missing_runs: int  # finished trials (not surplus ones) without a child run
    wrong_status: int  # child runs whose status is not their trial's
    notes: list[str]


def count(storage: str, tracking_uri: str) -> Figures:
    import optuna
    from mlflow import MlflowClient

    from gbsweep import keys, storages, studies
    from gbsweep.child_runs import RUN_STATUS

    trials = optuna.load_study(study_name=STUDY, storage=storages.open_storage(storage)).get_trials(deepcopy=False)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("chaos")
    runs = _all_runs(client, experiment.experiment_id) if experiment else []
    children = [r for r in runs if keys.PARENT_RUN_TAG in r.data.tags]
    per_number = collections.defaultdict(list)
    for run in children:
        per_number[int(run.data.tags[keys.TRIAL_NUMBER])].append(run)
    finished = [t for t in trials if t.state.is_finished() and not studies.is_surplus(t)]
    wrong = [t.number for t in finished for r in per_number.get(t.number, [])
             if r.info.status != RUN_STATUS[t.state.name]]
    lost, notes = lost_trials(trials)
    return Figures(
        counted=sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials), lost=len(lost),
        duplicated=sum(len(found) - 1 for found in per_number.values()),
        running_runs=sum(r.info.status == "RUNNING" for r in runs),
        parents=len(runs) - len(children),
        versions=len(client.search_model_versions("name = 'chaos'")),
        missing_runs=sum(t.number not in per_number for t in finished), wrong_status=len(wrong),
        notes=notes + ([f"child runs whose status is not the trial's: trials {wrong}"] if wrong else []),
    )


def lost_trials(trials: list) -> tuple[list[int], list[str]]:
    """The trials that did not count (failed, or left running or waiting) and whose params never
    reached a counted trial through their retries (user attr sweep.retry_of, set when a dead
    worker's trial is failed and its params enqueued again); and a note on the failures."""
    from gbsweep import keys, studies

    counted = ("COMPLETE", "PRUNED")
    retries = collections.defaultdict(list)
    for trial in trials:
        if keys.RETRY_OF in trial.user_attrs:
            retries[trial.user_attrs[keys.RETRY_OF]].append(trial)

    def reaches_count(trial) -> bool:  # noqa: ANN001 - a FrozenTrial
        return trial.state.name in counted or any(reaches_count(r) for r in retries[trial.number])

    cut = [t for t in trials if t.state.name not in counted and not studies.is_surplus(t)]
    lost = [t.number for t in cut if not reaches_count(t)]
    states = collections.Counter(t.state.name for t in trials)
    errors = collections.Counter(t.user_attrs.get(keys.ERROR, "no error (its process died)") for t in cut)
    surplus = sum(studies.is_surplus(t) for t in trials)
    notes = [f"trials {dict(states)}; surplus {surplus}; retried {sum(map(len, retries.values()))};"
             f" failed with {dict(errors)}"]
    twice = [n for n, found in retries.items() if len(found) > 1]
    if twice:
        notes.append(f"trials retried more than once: {twice}")
    if lost:
        notes.append(f"lost trials: {lost}")
    return lost, notes


def _all_runs(client, experiment_id: str) -> list:  # noqa: ANN001 - an MlflowClient
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


if __name__ == "__main__":
    sys.exit(main())
