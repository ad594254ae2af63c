"""The link `sweep ui` prints opens the MLflow UI's parallel-coordinates plot of every trial, in a browser.

Playwright for Python drives Debian's chromium (`make test` installs it; Playwright's own browser
downloads are not used). Where no chromium can be launched the tests are skipped, saying why.
The MLflow 3.17 compare page draws a plotly `.parcoords` in `.pcp-plot`; it preselects only three
params, so the test selects every swept param and the metrics it wants, then reads the plot's data.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from conftest import ROOT, small_space
from gbsweep import cli, keys, storages, ui

ARTIFACTS = ROOT / "tests" / "artifacts"  # screenshots for CI (git-ignored)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PLOT = ".pcp-plot.js-plotly-plot"
SELECT = ".du-bois-light-select-multiple"  # Parameters, then Metrics
OPEN_DROPDOWN = ".du-bois-light-select-dropdown:not(.du-bois-light-select-dropdown-hidden)"
ASSISTANT_CLOSE = '[data-component-id="mlflow.assistant.chat_panel.close"]'
PAGE_TIMEOUT_MS = 60_000

FIVE_PARAMS = """\
experiment: {name}
study_name: {name}
estimator: GradientBoostingClassifier
data: {{dataset: breast_cancer, holdout: 0.25}}
metric: roc_auc
cv: 2
seed: 7
sampler: random
n_trials: 5
fixed: {{n_estimators: 8, random_state: 0}}
params:
  learning_rate: {{type: float, low: 0.05, high: 0.5, log: true}}
  max_depth: {{type: int, low: 1, high: 3}}
  subsample: {{type: float, low: 0.5, high: 1.0}}
  max_features: {{type: categorical, choices: [sqrt, null]}}
  min_samples_leaf: {{type: int, low: 1, high: 16}}
"""

CONDITIONAL = """\
experiment: {name}
study_name: {name}
estimator: GradientBoostingClassifier
data: {{dataset: breast_cancer, holdout: 0.25}}
metric: roc_auc
cv: 2
seed: 3
sampler: random
n_trials: 6
fixed: {{n_estimators: 8, random_state: 0}}
params:
  learning_rate: {{type: float, low: 0.05, high: 0.5, log: true}}
  loss: {{type: categorical, choices: [log_loss, exponential]}}
  ccp_alpha: {{type: float, low: 0.0, high: 0.01, when: {{loss: exponential}}}}
"""

# A grid over max_depth 1..4 with 8 trees: trees of depth 1 and 2 are full whatever the data (about
# 10.8 and 13.1 kB pickled), depth 3 about 17.6 kB, so the model_bytes limit splits the grid. The
# predict_ms limit never binds (predicting takes about 1 ms); it makes `feasible` mean every limit.
CONSTRAINED = """\
experiment: {name}
study_name: {name}
estimator: GradientBoostingClassifier
data: {{dataset: breast_cancer, holdout: 0.25}}
metric: roc_auc
cv: 2
seed: 5
sampler: grid
n_trials: 4
fixed: {{n_estimators: 8, random_state: 0}}
constraints: {{predict_ms: {{max: 1000}}, model_bytes: {{max: 15000}}}}
params:
  max_depth: {{type: int, low: 1, high: 4}}
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """A headless chromium context, or a skip that says why there is none."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError as error:
        pytest.skip(f"Playwright for Python is not installed ({error}); pip install -e '.[test]'")
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        pytest.skip("no chromium here and none could be installed (make test runs apt-get install chromium)")
    playwright = None
    try:
        playwright = sync_playwright().start()
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=executable, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
    except (Error, OSError) as error:
        if playwright is not None:
            playwright.stop()
        pytest.skip(f"chromium at {executable} could not be launched: {str(error).splitlines()[0]}")
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield context
    finally:
        context.close()
        playwright.stop()


def swept_on_server(tmp_path: Path, server: str, name: str, space: str, capsys) -> tuple[optuna.Study, str]:
    """Run the space against the session's server; return its study and the compare link `sweep ui` prints."""
    storage = str(tmp_path / "optuna.journal")
    config = small_space(tmp_path, study=name, text=space.format(name=name))
    code = cli.main(["run", "-q", "--config", str(config), "--storage", storage, "--tracking-uri", server])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    code = cli.main(["ui", "--no-serve", "--tracking-uri", server, "--storage", storage,
                       "--study-name", name])
    out = capsys.readouterr().out
    assert code == 0
    compare, = [line for line in out.splitlines() if "/#/compare-runs?" in line]
    study = optuna.load_study(study_name=name, storage=storages.open_storage(storage))
    return study, compare


def choose(page, which: int, wanted: set[str]) -> None:
    """In the Parameters (0) or Metrics (1) select, leave exactly `wanted` selected.

    One dropdown open at a time: the one closed last stays in the page, still matching OPEN_DROPDOWN,
    until its closing animation ends, and its options counted with the new one's made a sixth option
    that then vanished (issue 19). So each wait is on the page's state: the last dropdown gone, this
    one open with every wanted option, read in one go; and after Escape, this one gone too.
    """
    page.locator(OPEN_DROPDOWN).wait_for(state="detached")
    page.locator(SELECT).nth(which).click()
    page.wait_for_function(
        """([open, wanted]) => {
            const dropdowns = document.querySelectorAll(open);
            if (dropdowns.length !== 1) return false;
            const titles = new Set(Array.from(dropdowns[0].querySelectorAll('.du-bois-light-select-item-option'),
                                              o => o.getAttribute('title')));
            return wanted.every(name => titles.has(name));
        }""", arg=[OPEN_DROPDOWN, sorted(wanted)])
    options = page.locator(f"{OPEN_DROPDOWN} .du-bois-light-select-item-option").evaluate_all(
        "options => options.map(o => [o.getAttribute('title'), o.getAttribute('aria-selected') === 'true'])")
    for name, selected in sorted(options):
        if selected != (name in wanted):
            page.locator(f'{OPEN_DROPDOWN} .du-bois-light-select-item-option[title="{name}"]').click()
    page.keyboard.press("Escape")
    page.locator(OPEN_DROPDOWN).wait_for(state="detached")


def plotted_dimensions(browser, link: str, params: set[str], metrics: set[str], screenshot: Path) -> dict:
    """Open the link, select these params and metrics; return {axis label: values as drawn}."""
    page = browser.new_page()
    try:
        page.goto(link)
        page.wait_for_selector(PLOT)
        assistant = page.locator(ASSISTANT_CLOSE)
        if assistant.count():  # the chat side panel takes a third of the page
            assistant.first.click()
        choose(page, 0, params)
        choose(page, 1, metrics)
        page.wait_for_function(
            f"n => document.querySelector('{PLOT}').data[0].dimensions.length === n", arg=len(params | metrics))
        # The WebGL lines are drawn on the frames after the data is set: let two frames pass.
        page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
        dimensions = page.evaluate(f"""() => document.querySelector('{PLOT}').data[0].dimensions.map(
            d => ({{label: d.label, values: Array.from(d.values), ticktext: d.ticktext || null,
                    tickvals: d.tickvals || null}}))""")
    finally:
        page.close()
    return {d["label"]: _as_drawn(d) for d in dimensions}


def _as_drawn(dimension: dict) -> list:
    """Numbers for a numeric axis; the tick labels for a categorical one (the UI cuts them to 10 chars)."""
    if dimension["ticktext"] is None:
        return dimension["values"]
    labels = dict(zip(dimension["tickvals"], dimension["ticktext"], strict=True))
    return [labels[v] for v in dimension["values"]]


def completed(study: optuna.Study) -> list:
    return sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: -t.value)


def test_the_compare_link_draws_every_swept_param_and_the_metric(browser, mlflow_server, tmp_path, capsys):
    study, link = swept_on_server(tmp_path, mlflow_server, "pcp", FIVE_PARAMS, capsys)
    trials = completed(study)
    params = {"learning_rate", "max_depth", "subsample", "max_features", "min_samples_leaf"}
    drawn = plotted_dimensions(browser, link, params, {"roc_auc"}, ARTIFACTS / "parallel-coordinates.png")
    assert set(drawn) == params | {"roc_auc"}  # an axis per swept param, plus the metric
    assert all(len(values) == len(trials) for values in drawn.values())  # a line per compared trial
    assert drawn["roc_auc"] == pytest.approx([t.value for t in trials])  # best first, as linked
    for name in ("learning_rate", "max_depth", "subsample", "min_samples_leaf"):
        assert drawn[name] == pytest.approx([t.params[name] for t in trials])
    assert drawn["max_features"] == [str(t.params["max_features"]) for t in trials]


def test_a_conditional_space_still_draws_every_trial(browser, mlflow_server, tmp_path, capsys):
    study, link = swept_on_server(tmp_path, mlflow_server, "pcp-conditional", CONDITIONAL, capsys)
    trials = completed(study)
    inactive = [t for t in trials if "ccp_alpha" not in t.params]
    assert inactive and len(inactive) < len(trials), "the seed should sample both branches"
    client = MlflowClient(mlflow_server)
    for trial in trials:  # the inactive param is logged as a visible placeholder, not left out
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.params["ccp_alpha"] == str(trial.params.get("ccp_alpha", "inactive"))
    params = {"learning_rate", "loss", "ccp_alpha"}
    screenshot = ARTIFACTS / "parallel-coordinates-conditional.png"
    drawn = plotted_dimensions(browser, link, params, {"roc_auc"}, screenshot)
    assert set(drawn) == params | {"roc_auc"}
    assert all(len(values) == len(trials) for values in drawn.values())
    assert not any(isinstance(v, float) and math.isnan(v) for values in drawn.values() for v in values)
    assert drawn["roc_auc"] == pytest.approx([t.value for t in trials])
    # A numeric param with a placeholder becomes a categorical axis; the UI cuts labels to 10 chars.
    assert drawn["ccp_alpha"] == [str(t.params.get("ccp_alpha", "inactive"))[:10] for t in trials]
    assert drawn["loss"] == [t.params["loss"][:10] for t in trials]


def test_the_feasible_axis_tells_the_trials_over_a_limit_apart(browser, mlflow_server, tmp_path, capsys):
    study, _ = swept_on_server(tmp_path, mlflow_server, "pcp-constrained", CONSTRAINED, capsys)
    # `sweep ui` compares every completed trial: those within the limits first, each part best first
    trials = sorted(completed(study), key=lambda t: (any(v > 0 for v in t.constraints.values()), -t.value))
    assert len(trials) == 4 and all(set(t.constraints) == {"predict_ms", "model_bytes"} for t in trials)
    feasible = [float(all(v <= 0 for v in t.constraints.values())) for t in trials]  # Optuna's rule
    assert 0.0 in feasible and 1.0 in feasible, "the model_bytes limit should split the grid"
    experiment_id, run_ids = ui.study_runs(study, mlflow_server, top=10)
    assert run_ids == [t.user_attrs[keys.RUN_ID] for t in trials]
    link = ui.ui_links(mlflow_server, experiment_id, run_ids, study.user_attrs[keys.PARENT_RUN_ID])["compare"]
    metrics = {"roc_auc", "predict_ms", "model_bytes", "feasible"}
    screenshot = ARTIFACTS / "parallel-coordinates-constrained.png"
    drawn = plotted_dimensions(browser, link, {"max_depth"}, metrics, screenshot)
    assert set(drawn) == metrics | {"max_depth"}
    assert all(len(values) == len(trials) for values in drawn.values())
    assert drawn["feasible"] == feasible  # exactly 1.0 or 0.0, line by line
    assert drawn["max_depth"] == [t.params["max_depth"] for t in trials]
    assert drawn["model_bytes"] == [t.user_attrs[keys.MODEL_BYTES] for t in trials]
    assert drawn["predict_ms"] == pytest.approx([t.user_attrs[keys.PREDICT_MS] for t in trials])
    assert drawn["roc_auc"] == pytest.approx([t.value for t in trials])
