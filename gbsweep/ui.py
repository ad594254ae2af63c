"""`sweep ui`: the MLflow UI served on the sweep's store, with direct links to the study's parent
run and to the compare page of its best trials; the server ends with `sweep ui` however it ends.
Plain values in, no command line: sweep.py parses that.

Only the standard library and the project's light modules are imported at the top.
"""

from __future__ import annotations

import json
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from gbsweep import child_runs, keys, studies
from gbsweep.errors import ConfigError, mask_uri, public_url, say

if TYPE_CHECKING:
    import subprocess

    from optuna import Study

TOP_COMPARED = 20  # the compare page's plots stay readable with about this many runs
UI_START_TIMEOUT_S = 120
UI_STOP_TIMEOUT_S = 15


# ---------------------------------------------------------------- sweep ui

@dataclass(frozen=True)
class UiPlace:
    """Where `sweep ui` serves (or, with serve False, which server it links to) and what it shows."""

    host: str = "127.0.0.1"
    port: int = 5000
    top: int = TOP_COMPARED
    serve: bool = True
    open_browser: bool = False
    quiet: bool = False
    debug: bool = False


def show_ui(study: Study, tracking_uri: str, where: UiPlace) -> int:
    """Serve the MLflow UI on the store (or, with where.serve False, link to the server at
    tracking_uri), print the links to the study's runs, parent and best trials compared, and
    serve until Ctrl-C. Returns the exit code."""
    if not where.serve and not tracking_uri.startswith(("http://", "https://")):
        raise ConfigError([(f"--no-serve: needs an http(s) MLflow server as --tracking-uri. Got"
                            f" {mask_uri(tracking_uri)} instead; without --no-serve, sweep ui serves it.")])
    if where.serve:
        _check_store_exists(tracking_uri)
        _check_port_free(where.host, where.port)
    experiment_id, run_ids = study_runs(study, tracking_uri, where.top)
    server = None
    if where.serve:
        server = start_ui(tracking_uri, where.host, where.port, where.debug)
        if server is None:
            return 1
        base = f"http://{_link_host(where.host)}:{where.port}"
    else:
        base = public_url(tracking_uri)
    try:
        links = ui_links(base, experiment_id, run_ids, study.user_attrs[keys.PARENT_RUN_ID])
        _print_links(study, links, len(run_ids), where.quiet)
        if where.open_browser:
            _open(links.get("compare") or links["runs"])
        return 0 if server is None else wait_ui(server)
    finally:
        if server is not None:
            stop_ui(server)


# ---------------------------------------------------------------- the study and its runs

def _check_store_exists(uri: str) -> None:
    """A local tracking store that is not there is refused, not served (and created) empty."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ConfigError([(f"tracking URI {uri}: no such database here; run `sweep run` first, or"
                            " name the sweep's store with --tracking-uri.")])


def completed_best_first(study: Study) -> list:
    """The completed trials, those within the constraints first (the compare page shows the ones
    past a limit too: its `feasible` axis tells them apart), each part best metric first."""
    from optuna.trial import TrialState

    sign = -1 if studies.maximizes(study) else 1
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: (not studies.feasible(t), sign * t.values[0], t.number))


def study_runs(study: Study, tracking_uri: str, top: int) -> tuple[str, list[str]]:
    """The parent run's experiment id and the child run ids of the best `top` completed trials."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    parent_run_id = study.user_attrs.get(keys.PARENT_RUN_ID)
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
    run_ids = {t.number: t.user_attrs.get(keys.RUN_ID) for t in best}
    if not all(run_ids.values()):  # a run the store had not created yet when its trial ended
        by_trial = child_runs.runs_by_trial(client, experiment_id, parent_run_id)
        run_ids = {number: run_id or (by_trial[number].info.run_id if number in by_trial else None)
                   for number, run_id in run_ids.items()}
    return experiment_id, [run_ids[t.number] for t in best if run_ids.get(t.number)]



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


def _link_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):  # listening everywhere: this machine answers on loopback
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _print_links(study: Study, links: dict[str, str], compared: int, quiet: bool) -> None:
    """Each link on stdout, what it shows on stderr just before it."""
    done = len(completed_best_first(study))
    which = f"the best {compared} of {done} completed trials (--top for more)" if compared < done \
        else f"the {done} completed trials, best first,"
    labels = {"runs": f"the runs of study {study.study_name!r} (trials nest under its parent run):",
              "parent": "the parent run (plots under Artifacts > plots):",
              "compare": f"{which} compared (Parallel Coordinates Plot):"}
    if "compare" not in links and not quiet:
        say("no completed trial to compare yet.")
    for key, link in links.items():
        if not quiet:
            say(labels[key])
        print(link, flush=True)


def _open(url: str) -> None:
    import webbrowser

    try:
        opened = webbrowser.open(url)
    except webbrowser.Error:
        opened = False
    if not opened:
        say("sweep: no browser found here; open the link above.")


# ---------------------------------------------------------------- serving the UI

def _check_port_free(host: str, port: int) -> None:
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, port))
    except OSError as error:
        raise ConfigError([(f"--port: {host}:{port} cannot be served ({error.strerror or error}); pick"
                            f" another --port, or use the server there with --no-serve --tracking-uri"
                            f" http://{_link_host(host)}:{port}.")]) from None


@dataclass
class UiServer:
    process: subprocess.Popen
    log: IO[str]  # its output: stderr with --debug, else a temporary file for the last lines
    watchdog: subprocess.Popen | None = None  # ends the server when sweep ui dies (_start_watchdog)
    lifeline: int = -1  # the write end of the watchdog's pipe


# Run by a second interpreter. EOF on stdin comes when the pipe's only write end closes, which the
# kernel does however sweep ui ends (SIGKILL too); then the server's process group is ended.
_WATCHDOG = """\
import os, signal, sys, time
group, grace = int(sys.argv[1]), float(sys.argv[2])
while os.read(0, 512):
    pass
try:
    os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        time.sleep(0.2)
        os.killpg(group, 0)
    os.killpg(group, signal.SIGKILL)
except ProcessLookupError:
    pass
"""


def start_ui(tracking_uri: str, host: str, port: int, debug: bool) -> UiServer | None:
    """`mlflow server` on the store, answering /health; None, said why, when it does not start.

    It runs in its own process group (uvicorn and helpers under it), which stop_ui ends as a whole,
    and a watchdog when sweep ui dies without stop_ui (SIGKILL); its log goes to stderr only with --debug.
    """
    import os
    import subprocess
    import tempfile
    import time
    import urllib.request

    log = sys.stderr if debug else tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed with the process)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
               "--host", host, "--port", str(port), "--workers", "1"]
    say(f"starting the MLflow UI on http://{_link_host(host)}:{port} (Ctrl-C stops it) ...")
    # The UI needs no background job runner (GenAI jobs): five fewer processes, a faster start.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = UiServer(process, log)
    deadline = time.monotonic() + UI_START_TIMEOUT_S
    try:
        server.watchdog, server.lifeline = _start_watchdog(process.pid)
        while time.monotonic() < deadline and process.poll() is None:
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
    say(f"sweep: the MLflow UI did not start: {tail or 'no answer in time'}")
    return None


def _start_watchdog(group: int) -> tuple[subprocess.Popen, int]:
    """A process that ends the server's group once sweep ui is gone, and the pipe end that keeps it waiting.

    PR_SET_PDEATHSIG would end the server alone, not the uvicorn under it. The watchdog has a
    session of its own, so a Ctrl-C or a hang-up meant for sweep ui's terminal does not end it.
    """
    import os
    import subprocess

    read_end, write_end = os.pipe()  # non-inheritable: no other child of sweep ui holds the write end
    try:
        watchdog = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHDOG, str(group), str(UI_STOP_TIMEOUT_S)],
                                    stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return watchdog, write_end


def wait_ui(server: UiServer) -> int:
    """Serve until Ctrl-C (or SIGTERM); 0 then, 1 when the server stops by itself."""
    import signal

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGINT too, as `sweep run` does: a process started in the background of a script inherits
    # SIGINT ignored, and Python then leaves it so (`sweep ui` served on after a Ctrl-C was sent).
    previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = server.process.wait()
    except KeyboardInterrupt:
        say("stopping the MLflow UI.")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    say(f"sweep: the MLflow UI stopped by itself (exit code {code}). {_log_tail(server.log)}")
    return 1


def stop_ui(server: UiServer) -> None:
    """End the server's process group: SIGTERM, then SIGKILL when it lingers."""
    import os
    import signal
    import subprocess

    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.process.pid, signum)
        except ProcessLookupError:
            break
        try:
            server.process.wait(timeout=UI_STOP_TIMEOUT_S)
            break
        except subprocess.TimeoutExpired:
            continue
    if server.watchdog is not None:  # the group is ended: its watch is over
        server.watchdog.kill()
        server.watchdog.wait()
        os.close(server.lifeline)
    if server.log is not sys.stderr:
        server.log.close()


def _log_tail(log: IO[str]) -> str:
    if log is sys.stderr:
        return ""
    log.seek(0)
    lines = [line.strip() for line in log.read().splitlines() if line.strip()]
    return " | ".join(lines[-3:])
