"""search_space: a refused space names every problem on one line, runs nothing and creates no file.

The refused spaces are a table: a valid base with one thing changed, and the exact problem lines.
The checks that need the data (target, scorer) go through `sweep validate`, as a user runs them.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from gbsweep import cli, lifecycle, params, search_space
from gbsweep.errors import ConfigError
from gbsweep.params import Param
from gbsweep.search_space import BUNDLED, DataConfig, SweepConfig, parse, suggest

ROOT = Path(__file__).resolve().parents[1]
STORES = ("mlflow.db", "optuna.journal", "mlruns")

BASE = """\
experiment: exp
estimator: GradientBoostingClassifier
data: {dataset: breast_cancer, holdout: 0.25}
metric: accuracy
cv: 2
seed: 7
fixed: {n_estimators: 5, random_state: 0}
params:
  learning_rate: {type: float, low: 0.05, high: 0.5, log: true}
  max_depth: {type: int, low: 1, high: 3}
  max_features: {type: categorical, choices: [sqrt, null]}
"""
DROP = object()  # as a value in changed(): remove the key
LOSS = {"type": "categorical", "choices": ["log_loss", "exponential"]}
CCP_ALPHA = {"type": "float", "low": 0.0, "high": 0.01, "when": {"loss": "exponential"}}


def changed(*edits: tuple[str, Any]) -> str:
    """The base space with each dotted key set to a value (or dropped), as YAML text."""
    raw = yaml.safe_load(BASE)
    for dotted, value in edits:
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        if value is DROP:
            del node[last]
        else:
            node[last] = copy.deepcopy(value)
    return yaml.safe_dump(raw, sort_keys=False)


def case(name: str, text: str, *problems: str) -> Any:
    return pytest.param(text, list(problems), id=name)


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return caught.value.problems


def validate(capsys: pytest.CaptureFixture, config: Path) -> tuple[int, str, str]:
    """`sweep validate --config <config>` in-process: (exit code, stdout, stderr); it writes no file."""
    before = sorted(os.listdir("."))
    code = cli.main(["validate", "--config", str(config)])
    out, err = capsys.readouterr()
    assert sorted(os.listdir(".")) == before
    assert not [name for name in STORES if Path(name).exists()]
    return code, out, err


def assert_refused(capsys: pytest.CaptureFixture, config: Path, problems: list[str]) -> None:
    code, out, err = validate(capsys, config)
    assert "Traceback" not in err
    assert (code, out, err.splitlines()) == (2, "", [f"sweep: {problem}" for problem in problems])


# ---------------------------------------------------------------- refused spaces, exact lines

SUBSAMPLE_REFUSED = ("The 'subsample' parameter of GradientBoostingClassifier must be a float in the range"
                     " (0.0, 1.0]. Got 1.5 instead.")
ESTIMATORS = ("GradientBoostingClassifier, GradientBoostingRegressor, HistGradientBoostingClassifier,"
              " HistGradientBoostingRegressor")
SEED_RANGE = "seed: must be an integer >= 0 and <= 4294967295."
LR_LOG_LOW = "params.learning_rate.low: must be > 0 when log is true. Got 0.0 instead."
NOT_A_PARAM = "is not a parameter of GradientBoostingClassifier. Did you mean 'learning_rate'?"
WHEN_ABOVE = "params.ccp_alpha.when.loss: must name a param defined above this one. Got 'loss' instead."
NO_PYTHON_TAG = ("could not determine a constructor for the tag"
                 " 'tag:yaml.org,2002:python/object/apply:os.system'.")
MAX_FEATURES_RANGE = ("must be an int in the range [1, inf), a float in the range (0.0, 1.0],"
                      " a str among {'log2', 'sqrt'} or None.")

REFUSED = [
    # the YAML itself
    case("malformed-yaml", BASE.replace("cv: 2", "cv: [2"),
         "<config>: is not valid YAML at line 6, column 5: expected ',' or ']', but got ':'."),
    case("top-level-list", "- experiment: exp\n- estimator: GradientBoostingClassifier\n",
         "<config>: must be a mapping of keys. Got list instead."),
    case("value-yaml-cannot-build", BASE.replace("seed: 7", "seed: 2024-13-45"),
         "<config>: is not valid YAML: a value cannot be built (month must be in 1..12)."),
    case("int-too-long-for-python", BASE.replace("seed: 7", "seed: " + "9" * 5000),
         "<config>: is not valid YAML: a value cannot be built (Exceeds the limit (4300 digits) for integer"
         " string conversion: value has 5000 digits;"
         " use sys.set_int_max_str_digits() to increase the limit)."),
    case("duplicate-key", BASE + "data: {dataset: iris}\n",
         "<config>: is not valid YAML at line 12, column 1: found duplicate key 'data'."),
    case("alias-cycle", BASE + "n: &loop [*loop]\n",
         "<config>: must not hold a value inside itself (a YAML alias within its own anchor)."),
    case("nested-too-deeply", "experiment: " + "[" * 3000 + "]" * 3000 + "\n",
         "<config>: is not valid YAML: it is nested too deeply."),
    # top-level keys
    case("unknown-top-key", changed(("n_trial", 5)), "n_trial: is not a known key. Did you mean 'n_trials'?"),
    case("cv-three", changed(("cv", "three")), "cv: must be an integer >= 2. Got 'three' instead."),
    case("n-trials-0", changed(("n_trials", 0)), "n_trials: must be an integer >= 1. Got 0 instead."),
    case("seed-negative", changed(("seed", -1)), f"{SEED_RANGE} Got -1 instead."),
    case("seed-past-numpy", changed(("seed", 2**32)), f"{SEED_RANGE} Got 4294967296 instead."),
    case("timeout-negative", changed(("timeout", -5)),
         "timeout: must be a number of seconds > 0 or null. Got -5 instead."),
    case("max-failures-bool", changed(("max_failures", True)),
         "max_failures: must be an integer >= 0. Got True instead."),
    case("experiment-blank", changed(("experiment", "  ")),
         "experiment: must be a non-empty name of at most 250 characters. Got '  ' instead."),
    case("model-name-from-experiment-with-slash", changed(("experiment", "team/churn")),
         "model_name: must not contain '/' or ':' nor be '.' or '..' (the experiment's name, the default);"
         " set model_name. Got 'team/churn' instead."),
    case("model-name-with-colon", changed(("model_name", "a:b")),
         "model_name: must not contain '/' or ':' nor be '.' or '..'. Got 'a:b' instead."),
    case("unknown-estimator", changed(("estimator", "GradientBoostingClasifier")),
         f"estimator: must be one of {ESTIMATORS}. Got 'GradientBoostingClasifier' instead."
         " Did you mean 'GradientBoostingClassifier'?"),
    case("unknown-sampler", changed(("sampler", "tpee")),
         "sampler: must be one of tpe, random, cmaes, qmc, grid. Got 'tpee' instead. Did you mean 'tpe'?"),
    case("unknown-pruner", changed(("pruner", "medain")),
         "pruner: must be one of none, median, percentile, successive_halving, hyperband."
         " Got 'medain' instead. Did you mean 'median'?"),
    # one param's spec
    case("unknown-param-spec-key", changed(("params.max_depth.lo", 1)),
         "params.max_depth.lo: is not a known key. Did you mean 'low'?"),
    case("unknown-param-type", changed(("params.max_depth.type", "integer")),
         "params.max_depth.type: must be one of float, int, categorical. Got 'integer' instead."
         " Did you mean 'int'?"),
    case("float-low-above-high",
         changed(("params.learning_rate.low", 0.5), ("params.learning_rate.high", 0.05)),
         "params.learning_rate: low <= high must hold. Got low=0.5, high=0.05 instead."),
    case("int-low-above-high", changed(("params.max_depth.low", 4)),
         "params.max_depth: low <= high must hold. Got low=4, high=3 instead."),
    case("int-bound-not-int", changed(("params.max_depth.high", 3.5)),
         "params.max_depth.high: must be an integer. Got 3.5 instead."),
    case("log-low-0", changed(("params.learning_rate.low", 0.0)), LR_LOG_LOW),
    case("log-not-bool", changed(("params.learning_rate.log", "yes")),
         "params.learning_rate.log: must be true or false. Got 'yes' instead."),
    case("log-float-with-step", changed(("params.learning_rate.step", 0.05)),
         "params.learning_rate.step: cannot be set when log is true. Got 0.05 instead."),
    case("log-float-with-step-1",
         changed(("params.learning_rate.step", 1.0), ("params.learning_rate.high", 2.05)),
         "params.learning_rate.step: cannot be set when log is true. Got 1.0 instead."),
    case("log-int-with-step", changed(("params.max_depth.log", True), ("params.max_depth.step", 2)),
         "params.max_depth.step: cannot be set when log is true. Got 2 instead."),
    case("int-step-not-dividing", changed(("params.max_depth.high", 4), ("params.max_depth.step", 2)),
         "params.max_depth.step: must divide high - low (3). Got 2 instead."),
    case("float-step-not-dividing",
         changed(("params.subsample", {"type": "float", "low": 0.5, "high": 1.0, "step": 0.3})),
         "params.subsample.step: must divide high - low (0.5). Got 0.3 instead."),
    case("int-step-0", changed(("params.max_depth.step", 0)),
         "params.max_depth.step: must be an integer > 0. Got 0 instead."),
    case("float-step-negative",
         changed(("params.subsample", {"type": "float", "low": 0.5, "high": 1.0, "step": -0.1})),
         "params.subsample.step: must be a number > 0. Got -0.1 instead."),
    case("int-past-float-range",
         changed(("params.max_depth.high", int("9" * 400)), ("params.max_depth.step", 3)),
         f"params.max_depth.step: must divide high - low ({int('9' * 400) - 1}). Got 3 instead."),
    case("float-step-too-small-to-count",
         changed(("params.subsample", {"type": "float", "low": 0.5, "high": 1.0, "step": 1e-320})),
         "params.subsample.step: must divide high - low (0.5). Got 1e-320 instead."),
    case("empty-choices", changed(("params.max_features.choices", [])),
         "params.max_features.choices: must be a non-empty list. Got [] instead."),
    case("repeated-choices", changed(("params.max_features.choices", ["sqrt", "sqrt"])),
         "params.max_features.choices: must not repeat a value. Got ['sqrt', 'sqrt'] instead."),
    case("choice-not-scalar", changed(("params.max_features.choices", ["sqrt", {"a": 1}])),
         "params.max_features.choices: must hold only strings, numbers, booleans or null."
         " Got ['sqrt', {'a': 1}] instead."),
    case("no-params", changed(("params", {})),
         "params: must map at least one estimator param to its range. Got {} instead."),
    # the estimator's own params
    case("unknown-estimator-param-in-params",
         changed(("params.learning_rate", DROP), ("params.learning_rat", {**LOSS, "choices": [0.1, 0.2]})),
         f"params.learning_rat: {NOT_A_PARAM}"),
    case("unknown-estimator-param-in-fixed", changed(("fixed.learning_rat", 0.1)),
         f"fixed.learning_rat: {NOT_A_PARAM}"),
    case("fixed-key-not-a-string", BASE.replace("random_state: 0}", "random_state: 0, 1: 2}"),
         "fixed.1: is not a parameter of GradientBoostingClassifier."),
    case("param-in-fixed-and-params", changed(("fixed.max_depth", 2)),
         "fixed.max_depth: is also in params; keep it in one place."),
    case("sklearn-refuses-range-edge",
         changed(("params.subsample", {"type": "float", "low": 0.5, "high": 1.5})),
         f"params.subsample: {SUBSAMPLE_REFUSED}"),
    case("sklearn-refuses-fixed-value", changed(("fixed.subsample", 1.5)),
         f"fixed.subsample: {SUBSAMPLE_REFUSED}"),
    case("sklearn-refuses-a-choice", changed(("params.max_features.choices", ["sqrt", "cube"])),
         "params.max_features: The 'max_features' parameter of GradientBoostingClassifier"
         f" {MAX_FEATURES_RANGE}"
         " Got 'cube' instead."),
    # conditions
    case("when-unknown-param", changed(("params.ccp_alpha", CCP_ALPHA)), WHEN_ABOVE),
    case("when-later-param", changed(("params.ccp_alpha", CCP_ALPHA), ("params.loss", LOSS)),
         f"{WHEN_ABOVE} It is defined below; move 'loss' above this one."),
    case("when-misspelled-param",
         changed(("params.loss", LOSS), ("params.ccp_alpha", {**CCP_ALPHA, "when": {"los": "exponential"}})),
         "params.ccp_alpha.when.los: must name a param defined above this one. Got 'los' instead."
         " Did you mean 'loss'?"),
    case("when-value-not-a-choice",
         changed(("params.loss", LOSS), ("params.ccp_alpha", {**CCP_ALPHA, "when": {"loss": "deviance"}})),
         "params.ccp_alpha.when.loss: must be among ['log_loss', 'exponential']. Got 'deviance' instead."),
    case("when-value-out-of-int-range",
         changed(("params.ccp_alpha", {**CCP_ALPHA, "when": {"max_depth": 7}})),
         "params.ccp_alpha.when.max_depth: must be among the numbers from 1 to 3. Got 7 instead."),
    case("when-on-a-refused-param-says-it-once",
         changed(("params.loss", {**LOSS, "choices": ["log_loss", "log_loss"]}),
                 ("params.ccp_alpha", CCP_ALPHA)),
         "params.loss.choices: must not repeat a value. Got ['log_loss', 'log_loss'] instead."),
    # the grid sampler
    case("grid-continuous-param", changed(("sampler", "grid")),
         "params.learning_rate: must be categorical, an int or a float with a step when sampler is grid."
         " Got FloatDistribution(high=0.5, log=True, low=0.05, step=None) instead."),
    case("grid-too-large", changed(("sampler", "grid"), ("params.learning_rate", DROP),
                                   ("params.max_depth.high", 100_000)),
         "params: must make at most 100000 combinations when sampler is grid. Got 200000 instead."),
    case("grid-with-when", changed(("sampler", "grid"), ("params.learning_rate", DROP), ("params.loss", LOSS),
                                   ("params.ccp_alpha", {**CCP_ALPHA, "step": 0.005})),
         "params.ccp_alpha.when: must be left out when sampler is grid (each grid point sets every param,"
         " so a skipped one would run the same point again). Got {'loss': ('exponential',)} instead."),
    # data, as far as it is checked without reading it
    case("data-missing", changed(("data", DROP)),
         "data: must be a mapping with 'dataset' or 'path'. Got None instead."),
    case("data-dataset-and-path", changed(("data.path", "rows.csv"), ("data.target", "y")),
         "data: must have exactly one of 'dataset' or 'path'. Got ['dataset', 'path'] instead."),
    case("data-neither", changed(("data.dataset", DROP)),
         "data: must have exactly one of 'dataset' or 'path'. Got [] instead."),
    case("unknown-bundled-dataset", changed(("data.dataset", "breast_cancr")),
         f"data.dataset: must be one of {', '.join(BUNDLED)}. Got 'breast_cancr' instead."
         " Did you mean 'breast_cancer'?"),
    case("holdout-0", changed(("data.holdout", 0)),
         "data.holdout: must be a fraction > 0 and < 1. Got 0 instead."),
    case("holdout-above-1", changed(("data.holdout", 1.5)),
         "data.holdout: must be a fraction > 0 and < 1. Got 1.5 instead."),
    case("path-without-target", changed(("data.dataset", DROP), ("data.path", "rows.csv")),
         "data.target: must name the target column when data.path is set. Got None instead."),
    case("target-with-bundled-dataset", changed(("data.target", "species")),
         "data.target: applies only with data.path (a bundled dataset has its own target)."
         " Got 'species' instead."),
    case("unknown-data-key", changed(("data.holdt", 0.3)),
         "data.holdt: is not a known key. Did you mean 'holdout'?"),
    # all at once
    case("several-problems-one-line-each",
         changed(("cv", "three"), ("n_trials", 0), ("seed", -1), ("timeout", -5), ("sampler", "tpee"),
                 ("params.learning_rate.low", 0.0), ("fixed.learning_rat", 0.1)),
         "cv: must be an integer >= 2. Got 'three' instead.",
         f"{SEED_RANGE} Got -1 instead.",
         "n_trials: must be an integer >= 1. Got 0 instead.",
         "timeout: must be a number of seconds > 0 or null. Got -5 instead.",
         "sampler: must be one of tpe, random, cmaes, qmc, grid. Got 'tpee' instead. Did you mean 'tpe'?",
         LR_LOG_LOW,
         f"fixed.learning_rat: {NOT_A_PARAM}"),
]


@pytest.mark.parametrize(("text", "problems"), REFUSED)
def test_a_refused_space_names_every_problem(text: str, problems: list[str]) -> None:
    assert sets_sorted(problems_of(text)) == sets_sorted(problems)


def sets_sorted(lines: list[str]) -> list[str]:
    """scikit-learn prints a set of choices ({'sqrt', 'log2'}) in hash order, which varies by process."""
    import re

    def sort_set(match: re.Match) -> str:
        return "{" + ", ".join(sorted(match.group(1).split(", "))) + "}"

    return [re.sub(r"\{([^{}]*)\}", sort_set, line) for line in lines]


def test_a_python_tag_is_refused_never_run(tmp_path: Path) -> None:
    text = "experiment: !!python/object/apply:os.system ['touch pwned']\n" + BASE.split("\n", 1)[1]
    assert problems_of(text) == [f"<config>: is not valid YAML at line 1, column 13: {NO_PYTHON_TAG}"]
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("depth", [150, 300, 450, 490])
@pytest.mark.parametrize("nest", [lambda d: "[" * d + "]" * d, lambda d: "{a: " * d + "1" + "}" * d],
                         ids=["lists", "mappings"])
def test_deep_nesting_is_refused_as_a_config_error(nest: Any, depth: int) -> None:
    """Around the depth where the YAML loader gives up, every later check must not give up instead."""
    for key in ("experiment", "fixed"):
        assert problems_of(f"{key}: {nest(depth)}\n")


def test_the_cli_prints_every_problem_and_creates_nothing(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "space.yaml"
    config.write_text(changed(("cv", "three"), ("sampler", "tpee"), ("params.learning_rate.low", 0.0)))
    assert_refused(capsys, config, [
        "cv: must be an integer >= 2. Got 'three' instead.",
        "sampler: must be one of tpe, random, cmaes, qmc, grid. Got 'tpee' instead. Did you mean 'tpe'?",
        LR_LOG_LOW,
    ])


def test_the_cli_refuses_malformed_yaml_with_its_position(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "space.yaml"
    config.write_text(BASE.replace("cv: 2", "cv: [2"))
    assert_refused(capsys, config, [
        f"{config}: is not valid YAML at line 6, column 5: expected ',' or ']', but got ':'."
    ])


def test_the_cli_refuses_a_python_tag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "space.yaml"
    config.write_text(BASE.replace("cv: 2", "cv: !!python/object/apply:os.system ['touch pwned']"))
    assert_refused(capsys, config, [f"{config}: is not valid YAML at line 5, column 5: {NO_PYTHON_TAG}"])


def test_the_cli_refuses_a_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "nope.yaml"
    assert_refused(capsys, config, [f"{config}: cannot be read (No such file or directory)."])


# ---------------------------------------------------------------- data and metric, through `sweep validate`

def rows(target: list) -> pd.DataFrame:
    return pd.DataFrame({"x": [float(i % 7) for i in range(len(target))], "y": target})


def data_case(name: str, estimator: str, data: dict, metric: str, target: list | None, *problems: str) -> Any:
    """`target`: the y column of the CSV at data.path; `{path}` and `{dtype}` in a problem are filled in."""
    return pytest.param(estimator, data, metric, target, list(problems), id=name)


CLF, REG = "GradientBoostingClassifier", "GradientBoostingRegressor"
F1_MULTICLASS = ("metric: 'f1' scores binary targets only; this target has 3 classes."
                 " Use a multiclass scorer such as roc_auc_ovr, f1_macro or accuracy.")
CSV = {"path": "rows.csv", "target": "y"}
BINARY = [0, 1] * 30

DATA_REFUSED = [
    data_case("path-missing", CLF, {**CSV, "path": "missing.csv"}, "accuracy", None,
              "data.path: file '{path}' does not exist."),
    data_case("path-wrong-suffix", CLF, {**CSV, "path": "rows.txt"}, "accuracy", BINARY,
              "data.path: must end in .csv or .parquet. Got '{path}' instead."),
    data_case("target-column-missing", CLF, {**CSV, "target": "label"}, "accuracy", BINARY,
              "data.target: column 'label' is not in {path}. Columns: x, y."),
    data_case("drop-column-missing", CLF, {**CSV, "drop": ["id"]}, "accuracy", BINARY,
              "data.drop: column 'id' is not in {path}."),
    data_case("continuous-target-with-classifier", CLF, CSV, "accuracy", [i / 10 + 0.05 for i in range(60)],
              "data.target ('y'): holds continuous values, so it needs a Regressor estimator,"
              " not a Classifier."),
    data_case("string-target-with-regressor", REG, CSV, "r2", ["a", "b"] * 30,
              "data.target ('y'): must be numeric for a Regressor. Got {dtype} instead."),
    data_case("whole-number-measurements-with-classifier", CLF, CSV, "accuracy", [1000.0 + i for i in range(60)],
              "data.target ('y'): holds 60 distinct numbers, most of them in fewer than 4 rows: it looks"
              " continuous, not like classes; use GradientBoostingRegressor or HistGradientBoostingRegressor."),
    data_case("one-class", CLF, CSV, "accuracy", [1] * 60,
              "data.target ('y'): must hold at least 2 classes for a Classifier. Got 1 instead."),
    data_case("class-too-small-for-cv", CLF, CSV, "accuracy", [0] * 57 + [1] * 3,
              "data.target ('y'): every class needs at least 4 rows for cv=2 and holdout=0.2."
              " Got 3 instead."),
    data_case("too-few-rows-for-cv", REG, {**CSV, "holdout": 0.5}, "r2", [1.5, 2.5, 3.5],
              "data.target ('y'): needs at least 2 training rows for cv=2 and holdout=0.5. Got 1 instead."),
    data_case("unknown-scorer", CLF, {"dataset": "breast_cancer"}, "roc_auk", None,
              "metric: must be a scikit-learn scorer name. Got 'roc_auk' instead. Did you mean 'roc_auc'?"),
    data_case("regression-scorer-with-classifier", CLF, {"dataset": "breast_cancer"}, "r2", None,
              "metric: 'r2' does not score classification, the task of GradientBoostingClassifier."),
    data_case("classification-scorer-with-regressor", REG, {"dataset": "diabetes"}, "roc_auc", None,
              "metric: 'roc_auc' does not score regression, the task of GradientBoostingRegressor."),
    data_case("binary-scorer-roc-auc-on-multiclass", CLF, {"dataset": "iris"}, "roc_auc", None,
              "metric: 'roc_auc' scores binary targets only; this target has 3 classes."
                " Use a multiclass scorer such as roc_auc_ovr, f1_macro or accuracy."),
    data_case("binary-scorer-f1-on-multiclass", CLF, {"dataset": "wine"}, "f1", None,
              F1_MULTICLASS),
    data_case("options-on-iris", CLF, {"dataset": "iris", "options": {"n_samples": 10}}, "accuracy", None,
              "data.options: only synthetic datasets take options, not iris."),
    data_case("unknown-synthetic-option", CLF, {"dataset": "make_classification", "options": {"n_rows": 10}},
              "accuracy", None, "data.options.n_rows: is not an option of make_classification; known:"
              " n_samples, n_features, n_informative, n_classes, noise."),
]


@pytest.mark.parametrize(("estimator", "data", "metric", "target", "problems"), DATA_REFUSED)
def test_validate_refuses_data_and_metric(tmp_path: Path, capsys: pytest.CaptureFixture, estimator: str,
                                          data: dict, metric: str, target: list | None,
                                          problems: list[str]) -> None:
    if "path" in data:
        data = {**data, "path": str(tmp_path / data["path"])}
        if target is not None:
            rows(target).to_csv(data["path"], index=False)
    config = tmp_path / "space.yaml"
    config.write_text(changed(("estimator", estimator), ("data", data), ("metric", metric)))
    dtype = rows(target).y.dtype if target else None
    assert_refused(capsys, config, [p.format(path=data.get("path"), dtype=dtype) for p in problems])


def test_validate_says_a_data_path_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "rows.csv").mkdir()
    config = tmp_path / "space.yaml"
    config.write_text(changed(("data", {**CSV, "path": str(tmp_path / "rows.csv")})))
    assert_refused(capsys, config, [f"data.path: '{tmp_path / 'rows.csv'}' is a folder, not a file."])


def test_prepare_raises_the_same_problems(tmp_path: Path) -> None:
    config = tmp_path / "space.yaml"
    config.write_text(changed(("data.dataset", "wine"), ("metric", "f1")))
    with pytest.raises(ConfigError) as caught:
        lifecycle.prepare(config)
    assert caught.value.problems == [F1_MULTICLASS]


# ---------------------------------------------------------------- valid spaces

def test_a_valid_space_parses_to_the_expected_config() -> None:
    text = changed(("params.loss", LOSS), ("params.ccp_alpha", CCP_ALPHA),
                   ("params.min_samples_leaf", {"type": "int", "low": 1, "high": 32, "log": True}),
                   ("params.subsample", {"type": "float", "low": 0.5, "high": 1.0, "step": 0.1}))
    assert parse(text) == SweepConfig(
        experiment="exp", study_name="exp-breast_cancer", model_name="exp",
        estimator="GradientBoostingClassifier", data=DataConfig(dataset="breast_cancer", holdout=0.25),
        metric="accuracy", cv=2, seed=7, sampler="tpe", pruner="none", n_trials=20, timeout=None,
        max_failures=10, fixed={"n_estimators": 5, "random_state": 0},
        params=(
            Param("learning_rate", FloatDistribution(0.05, 0.5, log=True)),
            Param("max_depth", IntDistribution(1, 3)),
            Param("max_features", CategoricalDistribution(["sqrt", None])),
            Param("loss", CategoricalDistribution(["log_loss", "exponential"])),
            Param("ccp_alpha", FloatDistribution(0.0, 0.01), when={"loss": ("exponential",)}),
            Param("min_samples_leaf", IntDistribution(1, 32, log=True)),
            Param("subsample", FloatDistribution(0.5, 1.0, step=0.1)),
        ),
        source=text, patience=50, min_delta=0.0001,
    )


def test_names_from_the_file_and_the_command_line_win_over_defaults() -> None:
    text = changed(("study_name", "s1"), ("model_name", "m1"),
                   ("data", {"path": "rows.parquet", "target": "y"}))
    config = parse(text, overrides={"n_trials": 3, "experiment": "e2", "timeout": None})
    assert (config.experiment, config.study_name, config.model_name, config.n_trials, config.timeout) == (
        "e2", "s1", "m1", 3, None)
    assert parse(changed(("data", {"path": "d/rows.csv", "target": "y"}))).study_name == "exp-rows.csv"


def test_grid_values_are_the_written_ones_and_stay_in_range() -> None:
    config = parse(changed(
        ("sampler", "grid"),
        ("params.learning_rate", {"type": "float", "low": 0.1, "high": 0.7, "step": 0.2}),
        ("params.subsample", {"type": "float", "low": 0.1, "high": 1.0, "step": 0.1}),
        ("params.min_samples_leaf", {"type": "int", "low": 1, "high": 4, "log": True})))
    assert search_space.grid(config) == {
        "learning_rate": [0.1, 0.3, 0.5, 0.7], "max_depth": [1, 2, 3], "max_features": ["sqrt", None],
        "subsample": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], "min_samples_leaf": [1, 2, 3, 4],
    }


def test_validate_accepts_the_shipped_space(capsys: pytest.CaptureFixture) -> None:
    assert validate(capsys, ROOT / "search_space.yaml") == (0, "ok\n", "")


def test_validate_falls_back_to_the_shipped_space(capsys: pytest.CaptureFixture) -> None:
    before = sorted(os.listdir("."))
    assert cli.main(["validate"]) == 0
    assert capsys.readouterr() == ("ok\n", "")
    assert sorted(os.listdir(".")) == before


def test_the_shipped_conditional_example_parses() -> None:
    """The commented `when` example in search_space.yaml works once uncommented, as it is."""
    text = (ROOT / "search_space.yaml").read_text()
    for line in ("  # loss: {type: categorical", "  # ccp_alpha: {type: float"):
        assert line in text
        text = text.replace(line, line.replace("# ", "", 1))
    conditions = [(p.name, p.when) for p in parse(text).params][-2:]
    assert conditions == [("loss", {}), ("ccp_alpha", {"loss": ("exponential",)})]


def test_a_valid_space_validates_with_its_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "rows.csv"
    rows(["yes", "no"] * 30).to_csv(path, index=False)
    config = tmp_path / "space.yaml"
    config.write_text(changed(("data", {"path": str(path), "target": "y"})))
    assert validate(capsys, config) == (0, "ok\n", "")
    prepared = lifecycle.prepare(config)
    assert (len(prepared.dataset.X_train), len(prepared.dataset.X_test)) == (48, 12)


# ---------------------------------------------------------------- suggest(): conditional params

def test_suggest_samples_a_conditional_param_only_when_its_condition_holds() -> None:
    config = parse(changed(("params.loss", LOSS), ("params.ccp_alpha", CCP_ALPHA)))
    suggested: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        suggested.append(suggest(config, trial))
        return 0.0

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=30)
    assert [t.params for t in study.trials] == suggested
    assert {t.params["loss"] for t in study.trials} == {"log_loss", "exponential"}  # both branches ran
    for trial in study.trials:
        assert ("ccp_alpha" in trial.params) == (trial.params["loss"] == "exponential")
        assert set(trial.params) - {"ccp_alpha"} == {"learning_rate", "max_depth", "max_features", "loss"}
        if "ccp_alpha" in trial.params:
            assert trial.distributions["ccp_alpha"] == FloatDistribution(0.0, 0.01)


# ---------------------------------------------------------------- fuzz: parse() only returns or refuses

WORDS = sorted({
    *search_space.TOP_KEYS, *search_space.DATA_KEYS, *params.PARAM_KEYS["float"], "choices",
    *search_space.ESTIMATORS, *search_space.SAMPLERS, *search_space.PRUNERS, *params.PARAM_TYPES,
    *BUNDLED, "learning_rate", "max_depth", "subsample", "loss", "ccp_alpha", "n_estimators", "class_weight",
    "exponential", "log_loss", "sqrt", "roc_auc",
})
words = st.sampled_from(WORDS)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | words
keys = words | st.text(max_size=8) | st.integers(-3, 3) | st.none() | st.booleans()
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=10)


def dotted_keys(node: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in node.items():
        found.append(f"{prefix}{key}")
        if isinstance(value, dict):
            found += dotted_keys(value, f"{prefix}{key}.")
    return found


KEY_PATHS = sorted({
    *dotted_keys(yaml.safe_load(BASE)), "params.loss", "params.ccp_alpha", "params.ccp_alpha.when",
    "params.max_depth.step", "params.learning_rate.step", "params.max_depth.when", "data.path", "data.target",
    "data.options", "data.drop", "sampler", "pruner", "timeout", "n_trials", "max_failures", "model_name",
    "study_name", "fixed.class_weight",
})
GOOD_VALUES = [LOSS, CCP_ALPHA, "grid", {"type": "int", "low": 1, "high": 8, "step": 1}]


@st.composite
def mutated_spaces(draw: st.DrawFn) -> str:
    """The base with one to three keys set to random (or valid) values: deep enough to reach every check."""
    edits = draw(st.lists(st.tuples(st.sampled_from(KEY_PATHS), values | st.sampled_from(GOOD_VALUES)),
                          min_size=1, max_size=3))
    raw = yaml.safe_load(BASE)
    for dotted, value in edits:
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[last] = copy.deepcopy(value)  # never edit GOOD_VALUES, nor share one value twice
    return yaml.safe_dump(raw, sort_keys=False)


yaml_like_text = st.text(alphabet=st.sampled_from(list(":-[]{}!&*#|>'\"%@`?,\n\t abc019.e+")), max_size=60)
spaces = (mutated_spaces() | st.dictionaries(keys, values, max_size=6).map(yaml.safe_dump)
          | st.text(max_size=80) | yaml_like_text)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(spaces)
def test_parse_only_returns_a_config_or_refuses_it(text: str) -> None:
    try:
        config = parse(text)
    except ConfigError as error:
        assert error.problems
        assert all(isinstance(p, str) and p and "\n" not in p for p in error.problems), error.problems
        return
    assert isinstance(config, SweepConfig)
    assert len(config.space_sha256()) == 64
    assert config.settings()["estimator"] == config.estimator
    if config.sampler == "grid":
        assert set(search_space.grid(config)) == {p.name for p in config.params}
