"""sweep: the command line and the sweep's orchestration (study, parent run, trials, finalize).

Exit codes: 0 done, 1 failure while running, 2 usage or config error (nothing ran), 130 interrupted.
Only the standard library is imported at the top, so `sweep --help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import reports
import studies
from search_space import ConfigError

DEFAULT_CONFIG = "search_space.yaml"
DEFAULT_STORAGE = "optuna.journal"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
STORAGE_ENV = "SWEEP_STORAGE"
FORKED_WAIT_S = 120  # how long --n-jobs workers wait for the study (validating the stores comes first)


class SweepFailed(Exception):
    """The sweep ran but could not finish its job (exit code 1)."""


@dataclass(frozen=True)
class Prepared:
    config: Any  # SweepConfig
    dataset: Any  # dataset.Dataset


# ---------------------------------------------------------------- validation (no store touched)

def prepare(args: argparse.Namespace) -> Prepared:
    """Validate the space, the data and the metric; raise ConfigError with every problem."""
    import dataset as data_module
    import search_space
    from objective import check_metric

    config = search_space.load(_config_path(args), overrides=_overrides(args))
    data = data_module.load(config.data, config.is_classifier, config.cv, config.seed)
    check_metric(config, data.y_train)
    return Prepared(config, data)


def _config_path(args: argparse.Namespace) -> Path:
    path = Path(args.config)
    if args.config == DEFAULT_CONFIG and not path.exists():
        return Path(__file__).with_name(DEFAULT_CONFIG)  # the embedded, documented default
    return path


def _overrides(args: argparse.Namespace) -> dict:
    return {"study_name": getattr(args, "study_name", None), "experiment": getattr(args, "experiment", None),
            "n_trials": getattr(args, "n_trials", None), "timeout": getattr(args, "timeout", None)}


def tracking_uri(args: argparse.Namespace) -> str:
    return args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def storage_spec(args: argparse.Namespace) -> str:
    return args.storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


class Progress:
    """Optuna callback: the progress bar (or JSON lines) and one line per failed trial (runner.Budget stops
    the sweep)."""

    def __init__(self, config: Any, total: int, quiet: bool, log_format: str = "text") -> None:
        from tqdm import tqdm

        self.config, self.failed, self.pruned = config, 0, 0
        self.last_error = ""
        self.json_lines = log_format == "json"  # one JSON line per finished trial, instead of the bar
        # The study's done/total: a resumed sweep starts past 0, and other workers' trials count too.
        self.bar = tqdm(total=config.n_trials, initial=max(0, config.n_trials - total),
                        desc=config.study_name, unit="trial", file=sys.stderr,
                        disable=quiet or self.json_lines, dynamic_ncols=True)

    def __call__(self, study: Any, trial: Any) -> None:
        from optuna.trial import TrialState

        import runner

        if self.json_lines and not trial.user_attrs.get("sweep.surplus"):
            line = {**reports.trial_row(trial), "error": trial.user_attrs.get("sweep.error")}
            print(json.dumps(line, default=str), file=sys.stderr, flush=True)
        if trial.state == TrialState.FAIL:
            if not trial.user_attrs.get("sweep.surplus"):
                self.failed += 1
                self.last_error = trial.user_attrs.get("sweep.error", "")
                if not self.json_lines:
                    self.bar.write(f"trial {trial.number} failed: {self.last_error}", file=sys.stderr)
            return
        self.pruned += trial.state == TrialState.PRUNED
        self.bar.update(max(0, min(runner.counts(study)[0], self.config.n_trials) - self.bar.n))
        best = _best_value(study)
        postfix = {"best": f"{best:.4f}" if best is not None else "-", "pruned": self.pruned,
                   "failed": self.failed}
        self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()


def _best_value(study: Any) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no completed trial yet
        return None


def run_trials(study: Any, prepared: Prepared, recorder: Any, args: argparse.Namespace,
               wait_for_workers: bool = True) -> int:
    """Run trials here (and in --n-jobs - 1 worker processes) until the study has n_trials counted."""
    import runner
    from objective import Objective, prepare_folds

    config, data = prepared.config, prepared.dataset
    before = len(study.trials)
    counted = runner.counts(study)[0]
    if counted >= config.n_trials:
        return 0
    folds = prepare_folds(config, data.X_train, data.y_train, data.preprocessor)
    objective = Objective(config, folds, recorder, runner.worker_id())
    progress = Progress(config, config.n_trials - counted, args.quiet, getattr(args, "log_format", "text"))
    try:
        if wait_for_workers:
            runner.run_until_done(study, objective, recorder, config, progress)
        else:
            runner.run_worker(study, objective, recorder, config, progress, config.timeout)
    finally:
        progress.close()
    return len(study.trials) - before


# ---------------------------------------------------------------- finalize

def best_export(study: Any) -> dict:
    """The best trial, with the tuned plus the fixed params, ready for Estimator(**params)."""
    try:
        best = study.best_trial
    except ValueError:
        raise SweepFailed(f"study {study.study_name!r} has no completed trial yet.") from None
    fixed = study.user_attrs.get("sweep.fixed_params", {})
    return {"study": study.study_name, "trial": best.number, "value": best.value,
            "params": {**fixed, **best.params}}


def finalize(study: Any, prepared: Prepared, tracker: Any, parent_run_id: str) -> dict:
    """Repair the child runs MLflow missed, log the results on the parent run, and promote the
    best model once per best trial."""
    from objective import build_model, scorer_for

    config, data = prepared.config, prepared.dataset
    best = best_export(study)
    repaired = tracker.sync_trials(study, config, parent_run_id)
    if repaired:
        _say(f"repaired {repaired} child runs that were left running or that MLflow had missed.")
    tracker.log_results(parent_run_id, config.metric, best, study.trials_dataframe())
    reports.log_plots(tracker.client, parent_run_id, study)
    if study.user_attrs.get("sweep.promoted_trial") == best["trial"]:
        _say(f"best trial {best['trial']} was promoted already; nothing new to promote.")
        return best
    model = build_model(config, data.preprocessor, study.best_trial.params)
    model.fit(data.X_train, data.y_train)
    holdout = float(scorer_for(config)(model, data.X_test, data.y_test))
    promotion = tracker.promote(config, parent_run_id, model, data.X_train.head(5), holdout, best["trial"])
    study.set_user_attr("sweep.promoted_trial", best["trial"])
    _say(f"registered {config.model_name!r} version {promotion.version} as @{promotion.alias}"
         f" (holdout {config.metric} {holdout:.4f})")
    return best


# ---------------------------------------------------------------- commands

def cmd_run(args: argparse.Namespace) -> int:
    """Validate, open both stores, run the trials (here and in workers), then finalize once."""
    import runner

    prepared = prepare(args)
    # Workers fork now, with the data loaded and nothing opened yet: no import or load again,
    # and no database connection shared across processes. They wait for the study.
    workers = runner.fork_workers(args.n_jobs - 1, _forked_worker, args, prepared)
    try:
        return _run_sweep(args, prepared, workers)
    except BaseException as error:
        runner.stop_workers(workers, getattr(error, "signum", signal.SIGTERM))
        raise


def _run_sweep(args: argparse.Namespace, prepared: Prepared, workers: list) -> int:
    import runner
    from tracking import Tracker

    config = prepared.config
    tracker = Tracker(tracking_uri(args), record_trials=True)
    tracker.check_reachable()
    study = studies.open_study(config, studies.open_storage(storage_spec(args)), prepared.dataset.digest)
    parent_run_id = tracker.parent_run(config, study.user_attrs.get("sweep.parent_run_id"))
    study.set_user_attr("sweep.n_trials", config.n_trials)
    study.set_user_attr("sweep.parent_run_id", parent_run_id)  # last: workers wait for it
    recorder = tracker.recorder(parent_run_id, config)
    with runner.interrupts():
        try:
            ran = run_trials(study, prepared, recorder, args)
            runner.stop_workers(workers)
        except runner.Interrupted as interrupt:
            runner.stop_workers(workers, interrupt.signum)
            unlogged = _close_runs(recorder, study)
            return _after_interrupt(args, study, prepared, tracker, parent_run_id, interrupt, unlogged)
        except runner.BudgetExceeded as error:
            runner.stop_workers(workers, signal.SIGTERM)
            _report_unlogged(_close_runs(recorder, study))
            _finish_parent_if_possible(tracker, parent_run_id, "FAILED")
            raise SweepFailed(str(error)) from None
        _close_runs(recorder, study)  # what it missed, finalize repairs
        _say(f"study {config.study_name!r}: {ran} trials ran now, {runner.counts(study)[0]} of"
             f" {config.n_trials} counted.")
        best = _finalize_once(study, prepared, tracker, parent_run_id, "FINISHED")
    _say(f"best trial {best['trial']}: {config.metric} {best['value']:.4f}")
    _emit(json.dumps(best, indent=2, default=str), args.output)
    return 0


def _forked_worker(args: argparse.Namespace, prepared: Prepared) -> None:
    """A --n-jobs worker process: join the study `sweep run` is creating and run its trials."""
    args.quiet = True  # one progress bar: the main process's

    def work() -> int:
        study = studies.load_study(storage_spec(args), prepared.config.study_name, wait_s=FORKED_WAIT_S)
        return _work_on_study(args, study, prepared)

    os._exit(_guarded(work, args.debug))


def _close_runs(recorder: Any, study: Any) -> list[int]:
    """Close the child runs of interrupted trials, wait for the queued MLflow writes; return the
    numbers of the trials that could not be logged."""
    recorder.close_unfinished(study)
    return recorder.flush()


def _report_unlogged(unlogged: list[int]) -> None:
    if unlogged:
        _say(f"sweep: {len(unlogged)} trials could not be logged to MLflow; they are safe in the Optuna"
             " storage: run `sweep sync` once the tracking store is back.")


def _finalize_once(study: Any, prepared: Prepared, tracker: Any, parent_run_id: str, status: str) -> dict:
    """finalize, then end the parent run with `status` (FAILED if finalize failed)."""
    try:
        best = finalize(study, prepared, tracker, parent_run_id)
    except (SweepFailed, KeyboardInterrupt):
        _finish_parent_if_possible(tracker, parent_run_id, "FAILED")
        raise
    except Exception as error:  # MLflow's and the network's many types: the store failed us
        _finish_parent_if_possible(tracker, parent_run_id, "FAILED")
        first = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        raise SweepFailed(
            f"the tracking store failed while finishing the sweep ({type(error).__name__}: {first}); the"
            " trials are safe in the Optuna storage: once the store is back, run `sweep sync`, then"
            " the same `sweep run` to promote.") from error
    tracker.finish_parent(parent_run_id, status)
    return best


def _finish_parent_if_possible(tracker: Any, parent_run_id: str, status: str) -> None:
    try:
        tracker.finish_parent(parent_run_id, status)
    except Exception:  # the store is down: the parent stays RUNNING until the next run or sync
        pass


def _after_interrupt(args: argparse.Namespace, study: Any, prepared: Prepared, tracker: Any,
                     parent_run_id: str, interrupt: Any, unlogged: list[int]) -> int:
    """Export and (unless told not to) promote the best so far; exit 130 (SIGINT) or 143 (SIGTERM)."""
    import runner

    _say(f"sweep: interrupted by {interrupt}; {runner.counts(study)[0]} of {prepared.config.n_trials}"
         " trials counted. Run the same command again to resume.")
    if args.no_promote_on_interrupt or not _has_completed_trial(study):
        _report_unlogged(unlogged)
        _finish_parent_if_possible(tracker, parent_run_id, "KILLED")
    else:
        best = _finalize_once(study, prepared, tracker, parent_run_id, "KILLED")
        _emit(json.dumps(best, indent=2, default=str), args.output)
    return interrupt.exit_code


def _has_completed_trial(study: Any) -> bool:
    return _best_value(study) is not None


def cmd_validate(args: argparse.Namespace) -> int:
    prepare(args)
    print("ok")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    study = studies.load_study(storage_spec(args), args.study_name or _study_name_from_config(args))
    best = best_export(study)
    if args.format == "yaml":
        import yaml

        text = yaml.safe_dump(best, sort_keys=False)
    else:
        text = json.dumps(best, indent=2, default=str)
    _emit(text, args.output)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Join a running sweep's study and run its trials until the study's total is reached."""
    study = studies.load_study(storage_spec(args), args.study_name or _study_name_from_config(args),
                               wait_s=args.wait)
    return _work_on_study(args, study, _prepare_from_study(args, study))


def _work_on_study(args: argparse.Namespace, study: Any, prepared: Prepared) -> int:
    """A worker's share of the trials: no parent run of its own, no finalize."""
    import runner
    from tracking import Tracker

    tracker = Tracker(tracking_uri(args), record_trials=True)
    tracker.check_reachable()
    recorder = tracker.recorder(study.user_attrs["sweep.parent_run_id"], prepared.config)
    with runner.interrupts():
        try:
            ran = run_trials(study, prepared, recorder, args, wait_for_workers=False)
        except runner.Interrupted as interrupt:
            _report_unlogged(_close_runs(recorder, study))
            return interrupt.exit_code
        except runner.BudgetExceeded as error:
            _report_unlogged(_close_runs(recorder, study))
            raise SweepFailed(str(error)) from None
        _report_unlogged(_close_runs(recorder, study))
    if not args.quiet:
        _say(f"worker: {ran} trials ran in study {study.study_name!r}.")
    return 0


def _prepare_from_study(args: argparse.Namespace, study: Any) -> Prepared:
    """The study's own space and data; a worker whose local file or data differs is refused."""
    import dataset as data_module

    config = studies.study_config(study)
    if args.config != DEFAULT_CONFIG or Path(args.config).exists():
        import search_space

        local = search_space.load(args.config, overrides={"study_name": study.study_name})
        if local.space_sha256() != config.space_sha256():
            raise ConfigError([f"{args.config}: differs from the search space of study"
                               f" {study.study_name!r}; a worker samples the study's own space."])
    data = data_module.load(config.data, config.is_classifier, config.cv, config.seed)
    studies.check_same_sweep(study, config, data.digest)
    return Prepared(config, data)


def cmd_sync(args: argparse.Namespace) -> int:
    """Rebuild the child runs and parent artifacts that MLflow lacks from the Optuna storage."""
    from tracking import Tracker

    study = studies.load_study(storage_spec(args), args.study_name or _study_name_from_config(args))
    config = studies.study_config(study)
    tracker = Tracker(tracking_uri(args))
    tracker.check_reachable()
    known = study.user_attrs["sweep.parent_run_id"]
    parent_run_id = tracker.parent_run(config, known, resume=False)
    if parent_run_id != known:
        study.set_user_attr("sweep.parent_run_id", parent_run_id)
        _say(f"sync: the parent run was missing; created {parent_run_id}.")
    changed = tracker.sync_trials(study, config, parent_run_id)
    if _has_completed_trial(study):
        tracker.log_results(parent_run_id, config.metric, best_export(study), study.trials_dataframe())
    _say(f"sync: {changed} child runs of study {study.study_name!r} updated"
         f" ({len(study.trials)} trials in the storage).")
    return 0


def _study_name_from_config(args: argparse.Namespace) -> str:
    import search_space

    return search_space.load(_config_path(args)).study_name


def _emit(text: str, output: str | None) -> None:
    """Data goes to stdout, or to the file the user named."""
    if output:
        Path(output).write_text(text.rstrip("\n") + "\n")
        _say(f"wrote {output}")
    else:
        print(text)


def _say(message: str) -> None:
    print(message, file=sys.stderr)


# ---------------------------------------------------------------- the parser

def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=DEFAULT_CONFIG, help="search space file (default: %(default)s)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    common.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    stores = argparse.ArgumentParser(add_help=False)
    stores.add_argument("--storage", help=f"Optuna storage: a journal file, an RDB URL or redis:// "
                        f"(default: ${STORAGE_ENV} or {DEFAULT_STORAGE})")
    stores.add_argument("--study-name", help="the study (default: the config's study_name)")
    tracking = argparse.ArgumentParser(add_help=False)
    tracking.add_argument("--tracking-uri", help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                          f"{DEFAULT_TRACKING_URI})")

    parser = argparse.ArgumentParser(
        prog="sweep", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Hyperparameter sweeps of scikit-learn gradient boosting: Optuna trials as MLflow runs.",
        epilog="example:\n  sweep run --n-trials 40 && sweep best --format yaml",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = command(commands, "run", "run (or resume) a sweep, then promote and export the best model",
                   "sweep run --config search_space.yaml --n-trials 40 --study-name exp7",
                  [common, stores, tracking])
    run.add_argument("--experiment", help="MLflow experiment (default: the config's experiment)")
    run.add_argument("--n-trials", type=int, help="the study's total of completed and pruned trials")
    run.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    run.add_argument("--output", help="write the best params JSON to this file instead of stdout")
    run.add_argument("--n-jobs", type=_positive_int, default=1,
                     help="worker processes on this machine (default: 1)")
    run.add_argument("--no-promote-on-interrupt", action="store_true",
                     help="on Ctrl-C or SIGTERM, export nothing and promote nothing")
    run.add_argument("--log-format", choices=("text", "json"), default="text",
                     help="json: one JSON line per finished trial on stderr, instead of the progress bar")
    command(commands, "validate", "check a search space, its data and metric; run nothing",
             "sweep validate --config my_space.yaml", [common])
    best = command(commands, "best", "export the best params of a study from the Optuna storage",
                    "sweep best --study-name exp7 --format yaml > best_params.yaml", [common, stores])
    best.add_argument("--format", choices=("json", "yaml"), default="json")
    best.add_argument("--output", help="write to this file instead of stdout")
    worker = command(commands, "worker", "join a sweep's study from anywhere and run its trials",
                     "sweep worker --storage postgresql://sweeper@db/sweeps --tracking-uri http://mlflow:5000"
                     " --study-name big", [common, stores, tracking])
    worker.add_argument("--wait", type=float, default=60,
                        help="seconds to wait for `sweep run` to create the study (default: 60)")
    command(commands, "sync", "rebuild missing or stale MLflow runs of a study from its Optuna storage",
            "sweep sync --study-name exp7 --tracking-uri http://127.0.0.1:5000", [common, stores, tracking])
    reports.add_commands(commands, common, stores)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def command(commands: Any, name: str, summary: str, example: str, parents: list,
            handler: Any = None) -> argparse.ArgumentParser:
    """A subcommand whose help ends with an example; `handler(args) -> int` runs it."""
    parser = commands.add_parser(
        name, help=summary, description=summary, parents=parents,
        epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler or COMMANDS[name])
    return parser


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "best": cmd_best, "worker": cmd_worker,
            "sync": cmd_sync}


def _quiet_libraries(debug: bool) -> None:
    """Our own one-line messages replace the libraries' warnings, info lines and tracebacks."""
    import logging
    import warnings

    if debug:
        return
    warnings.filterwarnings("ignore")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # read when mlflow is first imported
    for name in ("alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import optuna  # its logger is configured on first use, so set it through its own switch

    optuna.logging.set_verbosity(optuna.logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_libraries(args.debug)
    return _guarded(lambda: args.handler(args), args.debug)


def _guarded(command: Any, debug: bool) -> int:
    """Run a command; turn what it raises into one line on stderr and an exit code."""
    try:
        return command()
    except ConfigError as error:
        for problem in error.problems:
            _say(f"sweep: {problem}")
        return 2
    except SweepFailed as error:
        _say(f"sweep: {error}")
        return 1
    except KeyboardInterrupt as interrupt:  # one that came outside the trials (runner.Interrupted)
        _say("sweep: interrupted.")
        return getattr(interrupt, "exit_code", 130)
    except BrokenPipeError:  # `sweep best | head`: the reader left; nothing to say
        sys.stderr.close()
        return 1
    except Exception as error:  # the last net: one line, the traceback only when asked
        if debug:
            raise
        _say(f"sweep: unexpected {type(error).__name__}: {error} (run with --debug for the traceback)")
        return 1


def cli() -> None:
    """The console script: main(), then exit without the interpreter's teardown.

    Freeing the imported libraries' objects takes about 2 s at exit here; by now every store is
    written and closed, the workers and the logger are joined, so there is nothing left to flush
    but our own streams.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # `sweep best | head`: the reader has gone
            pass
    os._exit(code)


if __name__ == "__main__":
    cli()
