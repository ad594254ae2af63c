"""`sweep ui`, `sweep trials`, the plots on the parent run and the live view, against real stores."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from conftest import ROOT, free_port, small_space
from gbsweep import cli, reports, storages, ui

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SWEEP_PLOTS = {"plots/optimization_history.png", "plots/parallel_coordinate.png",
               "plots/param_importances.png"}


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def load_study(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storages.open_storage(storage))


def run_small_sweep(folder: Path, stores: dict, study: str = "small", n_trials: int = 4) -> optuna.Study:
    config = small_space(folder, study=study, n_trials=n_trials)
    code = cli.main(["run", "-q", "--config", str(config), "--storage", stores["storage"],
                       "--tracking-uri", stores["tracking_uri"]])
    assert code == 0
    return load_study(stores["storage"], study)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One small sweep of 4 trials on sqlite stores, which the tests here only read."""
    folder = tmp_path_factory.mktemp("swept")
    stores = {"tracking_uri": f"sqlite:///{folder}/mlflow.db", "storage": str(folder / "optuna.journal")}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # a new sqlite store puts its artifacts under ./mlruns
        return {**stores, "study": run_small_sweep(folder, stores)}


@pytest.fixture
def finished(swept: dict, stores: dict) -> optuna.Study:
    """The module's sweep, its stores as `stores`."""
    stores.update(tracking_uri=swept["tracking_uri"], storage=swept["storage"])
    return swept["study"]


def assert_png(path: str | Path) -> None:
    """A PNG that decodes to an image with pixels."""
    import matplotlib.image

    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > 100 and height > 100


# ---------------------------------------------------------------- plots

def test_the_sweep_logs_its_plots_on_the_parent_run_as_pngs(finished, stores, tmp_path):
    client = MlflowClient(stores["tracking_uri"])
    parent_run_id = finished.user_attrs["sweep.parent_run_id"]
    logged = {a.path for a in client.list_artifacts(parent_run_id, "plots")}
    assert logged == SWEEP_PLOTS  # no pruner, so no intermediate curves
    for path in logged:
        assert_png(client.download_artifacts(parent_run_id, path, str(tmp_path)))


def study_with_pruned_trials() -> optuna.Study:
    """An in-memory study: 3 completed and 2 pruned trials with intermediate values."""
    study = optuna.create_study(direction="maximize")
    space = {"learning_rate": FloatDistribution(0.01, 0.5, log=True), "max_depth": IntDistribution(1, 5)}
    for number, (rate, depth, state) in enumerate([(0.1, 2, "COMPLETE"), (0.3, 4, "COMPLETE"),
                                                   (0.02, 1, "PRUNED"), (0.2, 3, "COMPLETE"),
                                                   (0.05, 5, "PRUNED")]):
        curve = {step: 0.8 + 0.01 * step + 0.02 * number for step in range(1, 4 if state == "PRUNED" else 6)}
        study.add_trial(create_trial(
            state=TrialState[state], value=curve[max(curve)] if state == "COMPLETE" else None,
            params={"learning_rate": rate, "max_depth": depth}, distributions=space,
            intermediate_values=curve))
    return study


def test_log_plots_draws_the_pruned_trials_curves(stores, tmp_path):
    client = MlflowClient(stores["tracking_uri"])
    run_id = client.create_run(client.create_experiment("plots")).info.run_id
    logged = reports.log_plots(client, run_id, study_with_pruned_trials())
    assert set(logged) == SWEEP_PLOTS | {"plots/intermediate_values_pruned.png"}
    assert {a.path for a in client.list_artifacts(run_id, "plots")} == set(logged)
    for path in logged:
        assert_png(client.download_artifacts(run_id, path, str(tmp_path)))


@pytest.mark.parametrize(("completed", "params"), [(1, 2), (3, 1)])
def test_importances_are_skipped_quietly_with_one_trial_or_one_param(stores, capsys, completed, params):
    study = optuna.create_study(direction="maximize")
    space = {f"p{i}": FloatDistribution(0.0, 1.0) for i in range(params)}
    for number in range(completed):
        study.add_trial(create_trial(value=0.5 + number / 10, params={n: number / 10 for n in space},
                                     distributions=space))
    client = MlflowClient(stores["tracking_uri"])
    run_id = client.create_run(client.create_experiment("few")).info.run_id
    capsys.readouterr()  # MLflow's own lines on creating the store
    assert reports.log_plots(client, run_id, study) == ["plots/optimization_history.png",
                                                        "plots/parallel_coordinate.png"]
    assert capsys.readouterr().err == ""


def test_a_plot_that_cannot_be_drawn_is_named_and_the_others_are_logged(stores, capsys, monkeypatch):
    from optuna.visualization import matplotlib as vis

    def broken(*args, **kwargs):
        raise RuntimeError("no axes for you\nsecond line")

    monkeypatch.setattr(vis, "plot_parallel_coordinate", broken)
    client = MlflowClient(stores["tracking_uri"])
    run_id = client.create_run(client.create_experiment("broken")).info.run_id
    capsys.readouterr()
    logged = reports.log_plots(client, run_id, study_with_pruned_trials())
    assert "plots/parallel_coordinate.png" not in logged and len(logged) == 3
    assert capsys.readouterr().err == "sweep: plot parallel_coordinate not logged: no axes for you\n"


# ---------------------------------------------------------------- sweep trials

def test_trials_json_equals_the_study_trials(finished, stores, capsys):
    code, out, _ = run_cli(capsys, "trials", "--study-name", "small", "--storage", stores["storage"],
                           "--format", "json")
    assert code == 0
    assert json.loads(out) == [
        {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
         "trees": t.user_attrs["sweep.trees"],
         "predict_ms": t.user_attrs["sweep.predict_ms"], "model_bytes": t.user_attrs["sweep.model_bytes"],
         "feasible": None, "duration_s": t.duration.total_seconds(), "run_id": t.user_attrs["mlflow_run_id"]}
        for t in finished.trials]


def test_trials_sorted_by_value_top_n_as_csv(finished, stores, capsys, tmp_path):
    target = tmp_path / "trials.csv"
    code, out, _ = run_cli(capsys, "trials", "--study-name", "small", "--storage", stores["storage"],
                           "--sort", "value", "--top", "2", "--format", "csv", "--output", str(target))
    assert code == 0 and out == ""
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    best = sorted(finished.trials, key=lambda t: -t.value)[:2]
    assert [int(r["number"]) for r in rows] == [t.number for t in best]
    for row, trial in zip(rows, best, strict=True):
        assert float(row["value"]) == trial.value
        assert float(row["learning_rate"]) == trial.params["learning_rate"]
        assert int(row["max_depth"]) == trial.params["max_depth"]
        assert row["max_features"] == str(trial.params["max_features"])
        assert row["run_id"] == trial.user_attrs["mlflow_run_id"]


def test_trials_table_is_aligned_with_one_line_per_trial(finished, stores, capsys):
    code, out, _ = run_cli(capsys, "trials", "--study-name", "small", "--storage", stores["storage"],
                           "--sort", "duration")
    assert code == 0
    header, *lines = out.rstrip("\n").split("\n")
    assert header.split() == ["number", "state", "value", "learning_rate", "max_depth", "max_features",
                              "trees", "predict_ms", "model_bytes", "duration_s", "run_id"]
    assert len(lines) == len(finished.trials)
    by_number = {t.number: t for t in finished.trials}
    durations = []
    for line in lines:
        number, state, value, *_, duration, run_id = line.split()
        trial = by_number[int(number)]
        assert (state, run_id) == ("COMPLETE", trial.user_attrs["mlflow_run_id"])
        assert float(value) == pytest.approx(trial.value, rel=1e-5)
        durations.append(float(duration))
        assert line.index(run_id) == header.index("run_id")  # aligned columns
    assert durations == sorted(durations, reverse=True)


def test_trials_without_a_config_shows_the_latest_study(tmp_path, stores, capsys):
    for name in ("older", "newer"):
        config = small_space(tmp_path, study=name, n_trials=1)
        code, _, err = run_cli(capsys, "run", "-q", "--config", str(config), "--storage", stores["storage"],
                               "--tracking-uri", stores["tracking_uri"])
        assert code == 0, err
    code, out, err = run_cli(capsys, "trials", "--storage", stores["storage"], "--format", "json")
    assert code == 0
    assert [row["run_id"] for row in json.loads(out)] == \
        [t.user_attrs["mlflow_run_id"] for t in load_study(stores["storage"], "newer").trials]
    assert "study 'newer': the latest in" in err


def test_trials_of_a_missing_storage_is_a_usage_error_that_creates_nothing(tmp_path, capsys):
    code, out, err = run_cli(capsys, "trials", "--storage", str(tmp_path / "none.journal"))
    assert (code, out) == (2, "")
    assert err.startswith("sweep: storage ") and "holds no study" in err
    assert not (tmp_path / "none.journal").exists()


# ---------------------------------------------------------------- sweep ui

def query_lists(link: str) -> dict[str, list[str]]:
    """The JSON arrays in a compare-runs link, as the UI parses them."""
    fragment = urllib.parse.urlsplit(link).fragment
    path, query = fragment.split("?", 1)
    assert path == "/compare-runs"
    return {key: json.loads(value) for key, value in urllib.parse.parse_qsl(query)}


def test_ui_links_resolve_to_the_study_runs_on_a_server(mlflow_server, tmp_path, capsys):
    stores = {"tracking_uri": mlflow_server, "storage": str(tmp_path / "optuna.journal")}
    config = small_space(tmp_path, study="links", experiment="links", n_trials=3)
    code, _, err = run_cli(capsys, "run", "-q", "--config", str(config), "--storage", stores["storage"],
                           "--tracking-uri", mlflow_server)
    assert code == 0, err
    code, out, err = run_cli(capsys, "ui", "--no-serve", "--tracking-uri", mlflow_server,
                             "--storage", stores["storage"], "--study-name", "links", "--top", "2")
    assert code == 0, err
    runs_link, parent_link, compare_link = out.splitlines()
    client = MlflowClient(mlflow_server)
    study = load_study(stores["storage"], "links")
    parent = client.get_run(study.user_attrs["sweep.parent_run_id"])
    experiment_id = parent.info.experiment_id
    assert client.get_experiment(experiment_id).name == "links"
    assert runs_link == f"{mlflow_server}/#/experiments/{experiment_id}/runs"
    assert parent_link == f"{runs_link}/{parent.info.run_id}"
    compared = query_lists(compare_link)
    assert compared["experiments"] == [experiment_id]
    best = sorted(study.trials, key=lambda t: -t.value)[:2]
    assert compared["runs"] == [t.user_attrs["mlflow_run_id"] for t in best]
    for run_id, trial in zip(compared["runs"], best, strict=True):
        run = client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["sweep.trial_number"] == str(trial.number)
    with urllib.request.urlopen(mlflow_server) as response:  # the links' page: the UI itself
        assert b"<html" in response.read().lower()
    assert "the best 2 of 3 completed trials (--top for more) compared" in err


def test_ui_finds_the_child_runs_by_their_tags_when_a_trial_lacks_its_run_id(stores):
    """A trial whose run the store created late has no `mlflow_run_id` yet (`sweep sync` links it)."""
    client = MlflowClient(stores["tracking_uri"])
    experiment_id = client.create_experiment("late")
    parent_run_id = client.create_run(experiment_id).info.run_id
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("sweep.parent_run_id", parent_run_id)
    space = {"x": FloatDistribution(0.0, 1.0)}
    run_ids = {}
    for number, value in enumerate([0.2, 0.9, 0.5]):
        run_ids[number] = client.create_run(experiment_id, tags={
            "mlflow.parentRunId": parent_run_id, "sweep.trial_number": str(number)}).info.run_id
        attrs = {"mlflow_run_id": run_ids[number]} if number != 1 else {}
        study.add_trial(create_trial(value=value, params={"x": value}, distributions=space, user_attrs=attrs))
    best_first = [run_ids[1], run_ids[2], run_ids[0]]
    assert ui.study_runs(study, stores["tracking_uri"], top=20) == (experiment_id, best_first)


def test_ui_open_opens_the_compare_link(finished, stores, capsys, monkeypatch):
    import webbrowser

    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    for name in ("start_ui", "wait_ui", "stop_ui"):  # the links only: no server here
        monkeypatch.setattr(ui, name, lambda *args: 0)
    code, out, err = run_cli(capsys, "ui", "--open", "--tracking-uri", stores["tracking_uri"],
                             "--storage", stores["storage"], "--study-name", "small",
                             "--port", str(free_port()))
    assert code == 0, err
    assert opened == [out.splitlines()[2]] and "/#/compare-runs?" in opened[0]


def test_ui_no_serve_needs_an_http_server(finished, stores, capsys):
    code, out, err = run_cli(capsys, "ui", "--no-serve", "--tracking-uri", stores["tracking_uri"],
                             "--storage", stores["storage"], "--study-name", "small")
    assert (code, out) == (2, "")
    assert err.startswith("sweep: --no-serve: needs an http(s) MLflow server as --tracking-uri.")


def test_ui_refuses_a_tracking_store_that_is_not_there(finished, stores, capsys, tmp_path):
    missing = tmp_path / "elsewhere.db"
    code, _, err = run_cli(capsys, "ui", "--tracking-uri", f"sqlite:///{missing}",
                           "--storage", stores["storage"], "--study-name", "small",
                           "--port", str(free_port()))
    assert code == 2
    assert err == (f"sweep: tracking URI sqlite:///{missing}: no such database here; run `sweep run`"
                   " first, or name the sweep's store with --tracking-uri.\n")
    assert not missing.exists()


def ui_command(stores: dict, port: int) -> list[str]:
    return [sys.executable, str(ROOT / "sweep.py"), "ui", "--study-name", "small", "--port", str(port),
            "--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"]]


def live_processes() -> dict[int, tuple[int, int]]:
    """pid: (parent pid, process group) of every process not yet exited (zombies are not: an
    orphan's stays until its reaper waits for it, and some container inits never do)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):  # not a process, or gone meanwhile
            continue
        if state != "Z":
            found[int(entry.name)] = (int(ppid), int(group))
    return found


def child_groups(pid: int) -> set[int]:
    """The process groups of a process's children (the UI server's, the watchdog's)."""
    return {group for ppid, group in live_processes().values() if ppid == pid}


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
            return True
    except OSError:
        return False


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_ui_serves_the_sweep_store_until_interrupted(finished, stores, tmp_path):
    """The default: `sweep ui` serves the store itself, prints the links, and stops on Ctrl-C."""
    port = free_port()
    process = subprocess.Popen(ui_command(stores, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=tmp_path)
    try:
        links = [process.stdout.readline().strip() for _ in range(3)]
        groups = child_groups(process.pid)
        compared = query_lists(links[2])
        assert compared["runs"] == [t.user_attrs["mlflow_run_id"]
                                    for t in sorted(finished.trials, key=lambda t: -t.value)]
        base = f"http://127.0.0.1:{port}"
        assert links[0].startswith(f"{base}/#/experiments/")
        for run_id in compared["runs"]:  # the served store answers for the linked runs
            with urllib.request.urlopen(f"{base}/api/2.0/mlflow/runs/get?run_id={run_id}") as response:
                assert json.load(response)["run"]["info"]["run_id"] == run_id
        process.send_signal(signal.SIGINT)
        # communicate, not wait: it drains stderr, so the process never blocks on a full pipe
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    finally:
        if process.poll() is None:
            process.kill()
    assert "stopping the MLflow UI." in err
    assert not answers(port)
    assert groups and wait_until(lambda: not any(g in groups for _, g in live_processes().values()))


def test_ui_killed_with_sigkill_takes_its_server_with_it(finished, stores, tmp_path):
    """No `mlflow server` outlives `sweep ui` holding the port, however sweep ui ends."""
    port = free_port()
    with open(tmp_path / "ui.err", "w") as err:
        process = subprocess.Popen(ui_command(stores, port), stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path)
    groups: set[int] = set()
    try:
        assert wait_until(lambda: answers(port) or process.poll() is not None, timeout=180)
        assert process.poll() is None, (tmp_path / "ui.err").read_text()
        groups = child_groups(process.pid)
        assert len(groups) == 2  # the server's, with uvicorn under it, and its watchdog's
        process.kill()
        process.wait()
        assert wait_until(lambda: not answers(port)), "the server still answers"
        assert wait_until(lambda: not any(g in groups for _, g in live_processes().values())), \
            "a process of the server's group is left"
    finally:
        if process.poll() is None:
            process.kill()
        for group in groups:  # the test's own leftovers, should it fail
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


# ---------------------------------------------------------------- the live view

def test_log_format_json_prints_one_line_per_finished_trial(tmp_path, stores, capsys):
    config = small_space(tmp_path, study="live", n_trials=3)
    code, _, err = run_cli(capsys, "run", "--log-format", "json", "--config", str(config),
                           "--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"])
    assert code == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    study = load_study(stores["storage"], "live")
    assert [(r["number"], r["state"], r["value"], r["params"]) for r in lines] == \
        [(t.number, t.state.name, t.value, t.params) for t in study.trials]
    assert all(r["duration_s"] > 0 and r["error"] is None for r in lines)
    assert "\r" not in err  # no progress bar between the lines


def test_the_progress_line_counts_the_study_total_on_resume(stores, capsys, tmp_path):
    run_small_sweep(tmp_path, stores, n_trials=4)
    capsys.readouterr()
    config = tmp_path / "small.yaml"
    code, _, err = run_cli(capsys, "run", "--config", str(config), "--n-trials", "5",
                           "--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"])
    assert code == 0, err
    last = err.split("\r")[-1].splitlines()[0]
    assert "5/5" in last and "best=" in last and "pruned=0" in last and "failed=0" in last


def test_help_answers_fast_without_heavy_imports():
    code = ("import sys; from gbsweep import cli; cli._parser(); "
            "print(sorted(m for m in ('mlflow', 'optuna', 'sklearn', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": ""})
    assert result.stdout.strip() == "[]"
