"""Shared fixtures: temp stores for both sides, a small fast space, one `mlflow server` per session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMALL_SPACE = """\
experiment: {experiment}
study_name: {study}
estimator: GradientBoostingClassifier
data: {{dataset: breast_cancer, holdout: 0.25}}
metric: roc_auc
cv: 2
seed: 7
sampler: tpe
n_trials: {n_trials}
fixed: {{n_estimators: 8, random_state: 0}}
params:
  learning_rate: {{type: float, low: 0.05, high: 0.5, log: true}}
  max_depth: {{type: int, low: 1, high: 3}}
  max_features: {{type: categorical, choices: [sqrt, null]}}
"""


def small_space(tmp_path: Path, study: str = "small", experiment: str = "exp", n_trials: int = 4,
                text: str | None = None) -> Path:
    path = tmp_path / f"{study}.yaml"
    path.write_text(text or SMALL_SPACE.format(study=study, experiment=experiment, n_trials=n_trials))
    return path


@pytest.fixture
def stores(tmp_path: Path) -> dict:
    """A fresh sqlite tracking store and a fresh journal-file Optuna storage."""
    return {
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        "storage": str(tmp_path / "optuna.journal"),
    }


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Each test runs in its own folder, and no MLflow run stays active after it (global state)."""
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "SWEEP_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    yield
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {url} did not become healthy in {seconds} s")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """One real `mlflow server` (sqlite backend, served artifacts) for the whole session."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    log = open(root / "server.log", "w")
    process = subprocess.Popen(
        [mlflow_cli, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/server.db", "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )
    try:
        wait_healthy(url)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
