"""What the MLflow UI does not give: plots of the study, the trials table, direct UI links.

Only the standard library is imported at the top: the CLI builds its parser from here.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

PLOTS_DIR = "plots"  # on the parent run
TOP_COMPARED = 20  # the compare page's plots stay readable with about this many runs
UI_START_TIMEOUT_S = 120
UI_STOP_TIMEOUT_S = 15
TRIAL_SORTS = ("value", "number", "duration")
TRIAL_FORMATS = ("table", "csv", "json")
WHICH_STUDY = ("The study: --study-name, else the study_name in --config (or ./search_space.yaml),\n"
               "else the study started last in the storage.")


# ---------------------------------------------------------------- the commands

def add_commands(commands: Any, common: argparse.ArgumentParser, stores: argparse.ArgumentParser) -> None:
    """Register the report commands (`sweep ui`, `sweep trials`) on the CLI."""
    import sweep  # imported here: sweep imports this module at its top

    ui = sweep.command(commands, "ui", "serve the MLflow UI on the sweep's store; print links to the "
                       "study's runs and to its best trials compared",
                       "sweep ui --study-name exp7 --top 10 --open", [common, stores], handler=cmd_ui)
    ui.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                    f"{sweep.DEFAULT_TRACKING_URI}); with --no-serve, the http(s) server to link to")
    ui.add_argument("--host", default="127.0.0.1", help="the UI's address (default: %(default)s)")
    ui.add_argument("--port", type=int, default=5000, help="the UI's port (default: %(default)s)")
    ui.add_argument("--top", type=_positive, default=TOP_COMPARED,
                    help="compare the best N completed trials (default: %(default)s)")
    ui.add_argument("--no-serve", action="store_true",
                    help="only print the links, for the MLflow server given by --tracking-uri")
    ui.add_argument("--open", action="store_true", help="also open the comparison in a browser")
    trials = sweep.command(commands, "trials", "list a study's trials: number, state, value, params, "
                           "duration, run id", "sweep trials --sort value --top 10 --format csv",
                           [common, stores], handler=cmd_trials)
    trials.add_argument("--sort", choices=TRIAL_SORTS, default="number",
                        help="value: best first; number: oldest first; duration: longest first "
                        "(default: %(default)s)")
    trials.add_argument("--top", type=_positive, help="only the first N trials after sorting")
    trials.add_argument("--format", choices=TRIAL_FORMATS, default="table",
                        help="an aligned table, or CSV / JSON for scripts (default: %(default)s)")
    trials.add_argument("--output", help="write to this file instead of stdout")
    for parser in (ui, trials):
        parser.description += f"\n\n{WHICH_STUDY}"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1. Got {text!r} instead.")
    return value


def cmd_trials(args: argparse.Namespace) -> int:
    import sweep

    study = load_study(args)
    rows = trial_rows(study)
    rows = sort_rows(rows, args.sort, maximize=_maximize(study))[:args.top]
    sweep._emit(format_rows(rows, args.format), args.output)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import sweep
    from search_space import ConfigError
    from tracking import mask_uri

    study = load_study(args)
    uri = sweep.tracking_uri(args)
    if args.no_serve and not uri.startswith(("http://", "https://")):
        raise ConfigError([(f"--no-serve: needs an http(s) MLflow server as --tracking-uri. Got"
                            f" {mask_uri(uri)} instead; without --no-serve, sweep ui serves it.")])
    if not args.no_serve:
        _check_store_exists(uri)
        _check_port_free(args.host, args.port)
    experiment_id, run_ids = study_runs(study, uri, args.top)
    if args.no_serve:
        server, base = None, _public_base(uri)
    else:
        server = start_ui(uri, args.host, args.port, args.debug)
        base = f"http://{_link_host(args.host)}:{args.port}"
        if server is None:
            return 1
    try:
        links = ui_links(base, experiment_id, run_ids, study.user_attrs["sweep.parent_run_id"])
        _print_links(study, links, len(run_ids), args.quiet)
        if args.open:
            _open(links.get("compare") or links["runs"])
        return 0 if server is None else wait_ui(server)
    finally:
        if server is not None:
            stop_ui(server)


# ---------------------------------------------------------------- the study and its runs

def load_study(args: argparse.Namespace) -> Any:
    """The study named by --study-name, else by the config, else the storage's latest one."""
    import studies
    import sweep
    from search_space import ConfigError
    from tracking import mask_uri

    spec = sweep.storage_spec(args)
    name = args.study_name or _config_study_name(args)
    if name is None:
        name = studies.latest_study_name(spec)
        if name is None:
            raise ConfigError([(f"storage {mask_uri(spec)}: holds no study; run `sweep run` first"
                                " or name the sweep's storage with --storage.")])
        if not args.quiet:
            _say(f"study {name!r}: the latest in {mask_uri(spec)} (--study-name picks another)")
    return studies.load_study(spec, name)


def _config_study_name(args: argparse.Namespace) -> str | None:
    """The config's study name, when a config was given or ./search_space.yaml exists."""
    import search_space
    import sweep

    if args.config == sweep.DEFAULT_CONFIG and not Path(args.config).exists():
        return None
    return search_space.load(args.config).study_name


def _check_store_exists(uri: str) -> None:
    """A local tracking store that is not there is refused, not served (and created) empty."""
    from search_space import ConfigError

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ConfigError([(f"tracking URI {uri}: no such database here; run `sweep run` first, or"
                            " name the sweep's store with --tracking-uri.")])


def completed_best_first(study: Any) -> list:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: (-t.value if _maximize(study) else t.value, t.number))


def study_runs(study: Any, tracking_uri: str, top: int) -> tuple[str, list[str]]:
    """The parent run's experiment id and the child run ids of the best `top` completed trials."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from search_space import ConfigError
    from tracking import mask_uri

    parent_run_id = study.user_attrs.get("sweep.parent_run_id")
    if not parent_run_id:
        raise ConfigError([f"study {study.study_name!r}: has no MLflow parent run; run it with `sweep run`."])
    client = MlflowClient(tracking_uri)
    try:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
    except MlflowException:
        raise ConfigError([(f"study {study.study_name!r}: its parent run {parent_run_id} is not in"
                            f" the tracking store {mask_uri(tracking_uri)}; pass the sweep's"
                            " --tracking-uri.")]) from None
    best = completed_best_first(study)[:top]
    run_ids = {t.number: t.user_attrs.get("mlflow_run_id") for t in best}
    if not all(run_ids.values()):  # a run the store had not created yet when its trial ended
        by_trial = _runs_by_trial(client, experiment_id, parent_run_id)
        run_ids = {number: run_id or by_trial.get(number) for number, run_id in run_ids.items()}
    return experiment_id, [run_ids[t.number] for t in best if run_ids.get(t.number)]


def _runs_by_trial(client: Any, experiment_id: str, parent_run_id: str) -> dict[int, str]:
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              max_results=50000)
    return {int(r.data.tags["sweep.trial_number"]): r.info.run_id for r in runs
            if r.data.tags.get("sweep.trial_number", "").isdigit()}


def _maximize(study: Any) -> bool:
    return study.direction.name == "MAXIMIZE"


# ---------------------------------------------------------------- links

def ui_links(base: str, experiment_id: str, run_ids: list[str], parent_run_id: str) -> dict[str, str]:
    """The MLflow UI's runs table, the parent run (its plots) and, with runs, the compare page."""
    base = base.rstrip("/")
    links = {"runs": f"{base}/#/experiments/{experiment_id}/runs",
             "parent": f"{base}/#/experiments/{experiment_id}/runs/{parent_run_id}"}
    if run_ids:
        # The UI writes these arrays as JSON (RoutingUtils.getCompareRunPageRoute) and parses them back.
        links["compare"] = (f"{base}/#/compare-runs?runs={_json_param(run_ids)}"
                            f"&experiments={_json_param([experiment_id])}")
    return links


def _json_param(values: list[str]) -> str:
    return urllib.parse.quote(json.dumps(values, separators=(",", ":")), safe="")


def _public_base(uri: str) -> str:
    """The server's address without credentials: the browser asks for them itself."""
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _link_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):  # listening everywhere: this machine answers on loopback
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _print_links(study: Any, links: dict[str, str], compared: int, quiet: bool) -> None:
    """Each link on stdout, what it shows on stderr just before it."""
    done = len(completed_best_first(study))
    which = f"the best {compared} of {done} completed trials (--top for more)" if compared < done \
        else f"the {done} completed trials, best first,"
    labels = {"runs": f"the runs of study {study.study_name!r} (trials nest under its parent run):",
              "parent": "the parent run (plots under Artifacts > plots):",
              "compare": f"{which} compared (Parallel Coordinates Plot):"}
    if "compare" not in links and not quiet:
        _say("no completed trial to compare yet.")
    for key, link in links.items():
        if not quiet:
            _say(labels[key])
        print(link, flush=True)


def _open(url: str) -> None:
    import webbrowser

    try:
        opened = webbrowser.open(url)
    except webbrowser.Error:
        opened = False
    if not opened:
        _say("sweep: no browser found here; open the link above.")


# ---------------------------------------------------------------- serving the UI

def _check_port_free(host: str, port: int) -> None:
    import socket

    from search_space import ConfigError

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, port))
    except OSError as error:
        raise ConfigError([(f"--port: {host}:{port} cannot be served ({error.strerror or error}); pick"
                            f" another --port, or use the server there with --no-serve --tracking-uri"
                            f" http://{_link_host(host)}:{port}.")]) from None


def start_ui(tracking_uri: str, host: str, port: int, debug: bool) -> Any:
    """`mlflow server` on the store, answering /health; None, said why, when it does not start.

    It runs in its own process group (uvicorn and helpers under it), which stop_ui ends as a whole;
    its log goes to stderr only with --debug.
    """
    import os
    import subprocess
    import tempfile
    import time
    import urllib.request

    log = sys.stderr if debug else tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed with the process)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
               "--host", host, "--port", str(port), "--workers", "1"]
    _say(f"starting the MLflow UI on http://{_link_host(host)}:{port} (Ctrl-C stops it) ...")
    # The UI needs no background job runner (GenAI jobs): five fewer processes, a faster start.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server.log = log  # type: ignore[attr-defined]
    deadline = time.monotonic() + UI_START_TIMEOUT_S
    try:
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://{_link_host(host)}:{port}/health", timeout=2):
                    return server
            except OSError:
                time.sleep(0.5)
    except BaseException:  # Ctrl-C while it starts: the server, in its own session, would live on
        stop_ui(server)
        raise
    tail = _log_tail(log)
    stop_ui(server)
    _say(f"sweep: the MLflow UI did not start: {tail or 'no answer in time'}")
    return None


def wait_ui(server: Any) -> int:
    """Serve until Ctrl-C (or SIGTERM); 0 then, 1 when the server stops by itself."""
    import signal

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        code = server.wait()
    except KeyboardInterrupt:
        _say("stopping the MLflow UI.")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    _say(f"sweep: the MLflow UI stopped by itself (exit code {code}). {_log_tail(server.log)}")
    return 1


def stop_ui(server: Any) -> None:
    """End the server's process group: SIGTERM, then SIGKILL when it lingers."""
    import os
    import signal
    import subprocess

    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, signum)
        except ProcessLookupError:
            break
        try:
            server.wait(timeout=UI_STOP_TIMEOUT_S)
            break
        except subprocess.TimeoutExpired:
            continue
    if server.log is not sys.stderr:
        server.log.close()


def _log_tail(log: Any) -> str:
    if log is sys.stderr:
        return ""
    log.seek(0)
    lines = [line.strip() for line in log.read().splitlines() if line.strip()]
    return " | ".join(lines[-3:])


# ---------------------------------------------------------------- the trials table

def trial_rows(study: Any) -> list[dict]:
    return [trial_row(trial) for trial in study.get_trials(deepcopy=False)]


def trial_row(trial: Any) -> dict:
    """number, state, value, params (the active ones), duration_s, run_id: one row, one JSON line."""
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return {"number": trial.number, "state": trial.state.name, "value": trial.value,
            "params": dict(trial.params), "duration_s": duration,
            "run_id": trial.user_attrs.get("mlflow_run_id")}


def sort_rows(rows: list[dict], by: str, maximize: bool = True) -> list[dict]:
    """value: best first (trials without a value last); number: oldest first; duration: longest first."""
    if by == "value":
        sign = -1 if maximize else 1
        return sorted(rows, key=lambda r: (r["value"] is None, sign * (r["value"] or 0.0), r["number"]))
    if by == "duration":
        return sorted(rows, key=lambda r: (r["duration_s"] is None, -(r["duration_s"] or 0.0), r["number"]))
    return sorted(rows, key=lambda r: r["number"])


def format_rows(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str)
    names = list(dict.fromkeys(name for row in rows for name in row["params"]))
    columns = ["number", "state", "value", *names, "duration_s", "run_id"]
    if fmt == "csv":
        import csv
        import io

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_cell(row, c, "", repr) for c in columns] for row in rows])
        return out.getvalue().rstrip("\n")
    return _table(columns, [[_cell(row, c, "-", _short) for c in columns] for row in rows])


def _cell(row: dict, column: str, absent: str, number: Callable[[float], str]) -> str:
    """A param's value (None is Python's None), else the row's; `absent` for an inactive param or no value."""
    if column in row["params"]:
        value = row["params"][column]
        return "None" if value is None else number(value) if isinstance(value, float) else str(value)
    value = row.get(column)
    if value is None:
        return absent
    if isinstance(value, float):
        return f"{value:.2f}" if column == "duration_s" and number is _short else number(value)
    return str(value)


def _short(value: float) -> str:
    return f"{value:.6g}"


def _table(columns: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    right = {"number", "value", "duration_s"}

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if c in right else v.ljust(w)
                         for c, v, w in zip(columns, values, widths)).rstrip()

    return "\n".join([line(columns), *(line(r) for r in cells)])


# ---------------------------------------------------------------- plots on the parent run

def log_plots(client: Any, parent_run_id: str, study: Any) -> list[str]:
    """Log the study's plots as PNGs under plots/ on the parent run; return their artifact paths.

    A plot that cannot be drawn is named on stderr and skipped: it never fails the sweep.
    """
    import warnings

    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt

    logged = []
    for name, draw in _plots(study):
        path = f"{PLOTS_DIR}/{name}.png"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                figure = draw().figure
                client.log_figure(parent_run_id, figure, path,
                                  save_kwargs={"dpi": 110, "bbox_inches": "tight"})
            logged.append(path)
        except Exception as error:  # noqa: BLE001 (a plot is a nicety: say why, go on with the sweep)
            first = (str(error).splitlines() or [type(error).__name__])[0][:200]
            _say(f"sweep: plot {name} not logged: {first}")
        finally:
            plt.close("all")
    return logged


def _plots(study: Any) -> list[tuple[str, Callable[[], Any]]]:
    """(name, draw) for each plot the study has data for; draw() returns matplotlib Axes."""
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as vis

    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
              if t.intermediate_values]
    n_params = len({name for t in completed for name in t.params})
    metric = _metric_name(study)
    plots: list[tuple[str, Callable[[], Any]]] = []
    if completed:
        plots += [
            ("optimization_history", lambda: vis.plot_optimization_history(study, target_name=metric)),
            ("parallel_coordinate",
             lambda: _wide(vis.plot_parallel_coordinate(study, target_name=metric), n_params)),
        ]
    if len(completed) >= 2 and n_params >= 2:  # importances compare params over several trials
        evaluator = FanovaImportanceEvaluator(seed=0)
        plots.append(("param_importances", lambda: vis.plot_param_importances(
            study, evaluator=evaluator, target_name=metric)))
    if pruned:
        title = f"Pruned trials: {metric} while their ensembles grew"
        plots.append(("intermediate_values_pruned",
                      lambda: _titled(vis.plot_intermediate_values(_view(study, pruned)), title)))
    return plots


def _metric_name(study: Any) -> str:
    """The metric the study maximizes, from the search space it remembers."""
    import studies

    try:
        return studies.study_config(study).metric
    except Exception:  # noqa: BLE001 (a study not started by `sweep run`: Optuna's own label)
        return "Objective Value"


def _view(study: Any, trials: list) -> Any:
    """An in-memory study holding only these trials, for a plot of just them."""
    import optuna

    view = optuna.create_study(direction=study.direction)
    view.add_trials(trials)
    return view


def _wide(axes: Any, n_params: int) -> Any:
    axes.figure.set_size_inches(max(6.4, 1.4 * (n_params + 1)), 4.8)  # room for every axis's ticks
    return axes


def _titled(axes: Any, title: str) -> Any:
    axes.set_title(title)
    legend = axes.get_legend()
    if legend is not None and len(legend.get_texts()) > 12:
        legend.remove()  # one entry per trial: past a dozen it only hides the curves
    return axes


def _say(message: str) -> None:
    print(message, file=sys.stderr)
