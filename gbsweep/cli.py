"""sweep: the command line (the `sweep` console script; `python -m gbsweep`; `python sweep.py` in a
checkout). Every command's parser and handler, the defaults, stdout and the exit
codes; what a command does lives below it (lifecycle.py, studies.py, reports.py).

Exit codes: 0 done, 1 failure while running, 2 usage or config error (nothing ran), 130 interrupted.
Only light modules are imported at the top, so `sweep --help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gbsweep import __version__, lifecycle, reports, search_space, studies, ui, workers
from gbsweep.errors import ConfigError, guard, mask_uri, say

if TYPE_CHECKING:
    from optuna import Study

DEFAULT_CONFIG = "search_space.yaml"
DEFAULT_STORAGE = "optuna.journal"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
STORAGE_ENV = "SWEEP_STORAGE"
N_JOBS_ENV = "SWEEP_N_JOBS"
SHIPPED_CONFIG = Path(__file__).with_name(DEFAULT_CONFIG)  # the embedded, documented default: package data


# ---------------------------------------------------------------- defaults

def _config_path(args: argparse.Namespace) -> Path:
    """--config, else ./search_space.yaml, else the shipped one."""
    return _user_config(args) or SHIPPED_CONFIG


def _user_config(args: argparse.Namespace) -> Path | None:
    """The config file the user gave: --config, or ./search_space.yaml when it is there."""
    path = Path(args.config)
    if args.config == DEFAULT_CONFIG and not path.exists():
        return None
    return path


def _tracking_uri(args: argparse.Namespace) -> str:
    return str(args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)


def _storage(args: argparse.Namespace) -> str:
    return str(args.storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE)


def _study_name(args: argparse.Namespace, may_take_latest: bool = True) -> str:
    """The study a command means (docs/search-space.md "Which study"): --study-name, else the study_name of the
    user's config file; else the shipped file's, when the storage holds it or the command may not
    take another (`worker`); else the study started last in the storage."""
    user_config = _user_config(args)
    named = args.study_name or (search_space.load(user_config).study_name if user_config else None)
    if named:
        return str(named)
    default = search_space.load(SHIPPED_CONFIG).study_name  # validating it imports scikit-learn
    if not may_take_latest:
        return default
    name, latest = studies.pick_study_name(_storage(args), None, default)
    if latest and not args.quiet:
        say(f"study {name!r}: the latest in {mask_uri(_storage(args))} (--study-name picks another)")
    return name


def _n_jobs(args: argparse.Namespace) -> int:
    """`sweep run`'s worker processes: --n-jobs, else $SWEEP_N_JOBS, else one per core (on the
    anytime bench, one-thread processes found the glue's best sooner than one process fitting its
    folds in threads, or as soon). A `sweep worker` is one process."""
    if args.command != "run":
        return 1
    if args.n_jobs:
        return args.n_jobs
    if os.environ.get(N_JOBS_ENV):
        try:
            return _positive_int(os.environ[N_JOBS_ENV])
        except argparse.ArgumentTypeError as error:
            raise ConfigError([f"${N_JOBS_ENV} {error}"]) from None
    return workers.usable_cores()


def _options(args: argparse.Namespace) -> lifecycle.Options:
    n_jobs = _n_jobs(args)
    threads = args.threads or (workers.cores_per_worker(n_jobs) if n_jobs > 1 else None)
    return lifecycle.Options(threads=threads,
        storage=_storage(args), tracking_uri=_tracking_uri(args), n_jobs=n_jobs,
        quiet=args.quiet, log_format=getattr(args, "log_format", "text"),
        promote_on_interrupt=not getattr(args, "no_promote_on_interrupt", False), debug=args.debug,
    )


def _emit(text: str, output: str | None) -> None:
    """Data goes to stdout, or to the file the user named."""
    if output:
        Path(output).write_text(text.rstrip("\n") + "\n")
        say(f"wrote {output}")
    else:
        print(text)


def _as_json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)


# ---------------------------------------------------------------- commands

def cmd_run(args: argparse.Namespace) -> int:
    """Validate, open both stores, run the trials (here and in workers), then finalize once."""
    overrides = {"study_name": args.study_name, "experiment": args.experiment,
                 "n_trials": args.n_trials, "timeout": args.timeout, "from": args.from_study}
    options = _options(args)  # a bad $SWEEP_N_JOBS is refused before the data loads
    outcome = lifecycle.run(lifecycle.prepare(_config_path(args), overrides), options)
    if outcome.best is not None:
        _emit(_as_json(outcome.best), args.output)
    return outcome.exit_code


def cmd_validate(args: argparse.Namespace) -> int:
    lifecycle.prepare(_config_path(args))
    print("ok")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    study = studies.load_study(_storage(args), _study_name(args))
    best: dict | list[dict] = _pareto(study) if args.pareto else studies.best_export(study)
    if args.format == "yaml":
        import yaml

        text = yaml.safe_dump(best, sort_keys=False)
    else:
        text = _as_json(best)
    _emit(text, args.output)
    if args.advice:
        from gbsweep import advice

        config = studies.study_config(study)
        for line in advice.advise(config, studies.feasible_trials(study), studies.maximizes(study)):
            say(line)
    return 0


def _pareto(study: Study) -> list[dict]:
    """The Pareto front's trials, each in the shape of `sweep best`'s one, best metric first."""
    if len(study.directions) == 1:
        raise ConfigError([f"--pareto: study {study.study_name!r} has one objective; a front needs two"
                           " (metric: [<scorer>, predict_ms or model_bytes])."])
    return [studies.export(study, trial) for trial in studies.pareto_front(study)]


def cmd_worker(args: argparse.Namespace) -> int:
    """Join a running sweep's study and run its trials until the study's total is reached."""
    study = studies.load_study(_storage(args), _study_name(args, may_take_latest=False), wait_s=args.wait)
    prepared = lifecycle.prepare_from_study(study, _user_config(args))
    return lifecycle.work(study, prepared, _options(args))


def cmd_sync(args: argparse.Namespace) -> int:
    lifecycle.sync(studies.load_study(_storage(args), _study_name(args)), _tracking_uri(args))
    return 0


def cmd_trials(args: argparse.Namespace) -> int:
    study = studies.load_study(_storage(args), _study_name(args))
    rows = reports.sort_rows(reports.trial_rows(study), args.sort, maximize=studies.maximizes(study))
    _emit(reports.format_rows(rows[:args.top], args.format), args.output)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    study = studies.load_study(_storage(args), _study_name(args))
    where = ui.UiPlace(host=args.host, port=args.port, top=args.top, serve=not args.no_serve,
                            open_browser=args.open, quiet=args.quiet, debug=args.debug)
    return ui.show_ui(study, _tracking_uri(args), where)


# ---------------------------------------------------------------- the parser

WHICH_STUDY = ("The study: --study-name, else the study_name of --config (or ./search_space.yaml);\n"
               "without either, the shipped file's study if the storage holds it, else the study\n"
               "started last in the storage.")


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
    parser.add_argument("--version", action="version", version=f"sweep (gbsweep) {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = command(commands, "run", "run (or resume) a sweep, then promote and export the best model",
                  "sweep run --config search_space.yaml --n-trials 40 --study-name exp7",
                  [common, stores, tracking])
    run.add_argument("--experiment", help="MLflow experiment (default: the config's experiment)")
    run.add_argument("--n-trials", type=int, help="the study's total of completed and pruned trials")
    run.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    run.add_argument("--output", help="write the best params JSON to this file instead of stdout")
    run.add_argument("--from", dest="from_study", metavar="OLD",
                     help="a new study starts with the trials of study OLD that fit its space")
    run.add_argument("--n-jobs", type=_positive_int,
                     help=f"worker processes on this machine (default: ${N_JOBS_ENV}, else one per core)")
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
    best.add_argument("--pareto", action="store_true",
                      help="list every trial of a two-objective study's Pareto front instead, best metric first")
    best.add_argument("--advice", action="store_true",
                      help="also say, on stderr, which param ranges to widen (docs/search-space.md \"Range advice\")")
    worker = command(commands, "worker", "join a sweep's study from anywhere and run its trials",
                     "sweep worker --storage postgresql://sweeper@db/sweeps --tracking-uri http://mlflow:5000"
                     " --study-name big", [common, stores, tracking])
    worker.add_argument("--wait", type=float, default=60,
                        help="seconds to wait for `sweep run` to create the study (default: 60)")
    for takes_threads in (run, worker):
        takes_threads.add_argument("--threads", type=_positive_int,
                            help="OpenMP/BLAS threads per worker process (default: the cores divided by"
                            " --n-jobs for run; all cores for worker: give each of N workers on one"
                            " machine cores/N)")
    command(commands, "sync", "rebuild missing or stale MLflow runs of a study from its Optuna storage",
            "sweep sync --study-name exp7 --tracking-uri http://127.0.0.1:5000", [common, stores, tracking])
    _add_report_commands(commands, common, stores)
    return parser


def _add_report_commands(commands: Any, common: argparse.ArgumentParser, stores: argparse.ArgumentParser) -> None:
    serve = command(commands, "ui", "serve the MLflow UI on the sweep's store; print links to the "
                    "study's runs and to its best trials compared",
                    "sweep ui --study-name exp7 --top 10 --open", [common, stores])
    serve.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                       f"{DEFAULT_TRACKING_URI}); with --no-serve, the http(s) server to link to")
    serve.add_argument("--host", default="127.0.0.1", help="the UI's address (default: %(default)s)")
    serve.add_argument("--port", type=int, default=5000, help="the UI's port (default: %(default)s)")
    serve.add_argument("--top", type=_positive_int, default=ui.TOP_COMPARED,
                       help="compare the best N completed trials (default: %(default)s)")
    serve.add_argument("--no-serve", action="store_true",
                       help="only print the links, for the MLflow server given by --tracking-uri")
    serve.add_argument("--open", action="store_true", help="also open the comparison in a browser")
    trials = command(commands, "trials", "list a study's trials: number, state, value, params, "
                     "duration, run id", "sweep trials --sort value --top 10 --format csv", [common, stores])
    trials.add_argument("--sort", choices=reports.TRIAL_SORTS, default="number",
                        help="value: best first; number: oldest first; duration: longest first "
                        "(default: %(default)s)")
    trials.add_argument("--top", type=_positive_int, help="only the first N trials after sorting")
    trials.add_argument("--format", choices=reports.TRIAL_FORMATS, default="table",
                        help="an aligned table, or CSV / JSON for scripts (default: %(default)s)")
    trials.add_argument("--output", help="write to this file instead of stdout")
    for parser in (serve, trials):
        parser.description = f"{parser.description}\n\n{WHICH_STUDY}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1. Got {text!r} instead.")
    return value


def command(commands: Any, name: str, summary: str, example: str,
            parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """A subcommand whose help ends with an example; COMMANDS[name](args) -> int runs it."""
    parser = commands.add_parser(
        name, help=summary, description=summary, parents=parents,
        epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=COMMANDS[name])
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "validate": cmd_validate, "best": cmd_best, "worker": cmd_worker, "sync": cmd_sync,
    "ui": cmd_ui, "trials": cmd_trials,
}


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
    # It logs every failed statement (a locked or full database) with its traceback before raising
    # it; the recorder retries the write, and what stays failed is said in one line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    import optuna  # its logger is configured on first use, so set it through its own switch

    optuna.logging.set_verbosity(optuna.logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_libraries(args.debug)
    return guard(lambda: int(args.handler(args)), args.debug)


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
