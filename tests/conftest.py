"""Shared fixtures: temp stores for both sides, a small fast space, one `mlflow server` per session."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
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


def cli_in(folder: Path, *args: str) -> tuple[int, str, str]:
    """`sweep ARGS` run in `folder` (a sqlite store's artifacts go to its ./mlruns), for a fixture
    shared by a module, which cannot use capsys: (exit code, stdout, stderr)."""
    from gbsweep import cli

    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(args))
    finally:
        os.chdir(cwd)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def stores(tmp_path: Path) -> dict:
    """A fresh sqlite tracking store and a fresh journal-file Optuna storage."""
    return {
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        "storage": str(tmp_path / "optuna.journal"),
    }


@pytest.fixture(scope="session", autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory):
    """One cache folder for the session (its empty MLflow store is migrated once), not the user's."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Each test runs in its own folder, one `sweep run` process by default, and no MLflow run stays
    active after it (global state)."""
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "SWEEP_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    # One process per `sweep run` unless a test asks for more: the default (one per core) would
    # double every sweep's processes on CI's shared cores. Subprocesses inherit it.
    monkeypatch.setenv("SWEEP_N_JOBS", "1")
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


class MlflowServer:
    """A real `mlflow server` process, as users run it for many workers: a PostgreSQL backend store
    and a served artifact root. A test may stop and restart it."""

    def __init__(self, root: Path, database: str, host: str = "127.0.0.1") -> None:
        self.root, self.port, self.database, self.host = root, free_port(), database, host
        self.url = f"http://{host}:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return  # running still (a test that failed before it stopped the server): a second one would leak
        mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
        log = open(self.root / "server.log", "a")
        self.process = subprocess.Popen(
            [mlflow_cli, "server", "--host", self.host, "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"postgresql+psycopg2://postgres@127.0.0.1:5432/{self.database}",
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True,
            # no GenAI job runner: seven fewer processes on 2 cores
            env={**os.environ, "MLFLOW_TRACKING_URI": "", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        wait_healthy(self.url)

    def stop(self) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, 15)  # the server and its uvicorn workers
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()
        self.process = None


@pytest.fixture(scope="session")
def mlflow_service(tmp_path_factory: pytest.TempPathFactory):
    """One real `mlflow server` for the whole session (it takes 10-50 s to start here)."""
    with postgres_database() as database:
        server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), database)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_service: MlflowServer) -> str:
    """The session server's URL."""
    return mlflow_service.url


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def postgres_database():
    """A fresh database on the local PostgreSQL server (trust auth), dropped afterwards."""
    import uuid

    import psycopg2

    name = f"sweep_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg2.connect(PG_ADMIN)
    except psycopg2.OperationalError as error:
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is not running: {error}")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    try:
        yield name
    finally:
        # A new connection: a test may have restarted the server since (tests/test_restart.py).
        admin = psycopg2.connect(PG_ADMIN)
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def pg_database():
    with postgres_database() as name:
        yield name


# ---------------------------------------------------------------- the local PostgreSQL cluster itself

PG_CONF = Path("/etc/postgresql")


def why_no_cluster() -> str | None:
    """Why the tests cannot restart the local PostgreSQL cluster here, or None when they can."""
    if shutil.which("pg_ctlcluster") is None or not PG_CONF.is_dir() or not any(PG_CONF.iterdir()):
        return "no local PostgreSQL cluster to restart (pg_ctlcluster and /etc/postgresql are needed)"
    if os.geteuid() != 0:
        return "restarting the local PostgreSQL cluster needs root"
    return None


def cluster_command() -> list[str]:
    """pg_ctlcluster for the local cluster (the newest version's `main`); add stop, start or restart."""
    version = sorted(p.name for p in PG_CONF.iterdir())[-1]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def accepts_connections() -> bool:
    import psycopg2

    try:
        psycopg2.connect(PG_ADMIN, connect_timeout=2).close()
    except psycopg2.OperationalError:
        return False
    return True


def restart_postgres(cluster: list[str], while_down: Callable[[], None] | None = None) -> float:
    """Restart the cluster (shared with other tests: keep it short) and wait until it answers;
    return the seconds it did not. `while_down`: stop, call it, then start."""
    import psycopg2

    # A checkpoint first, so that the shutdown's own has little left to write (it took 3 s here).
    with psycopg2.connect(PG_ADMIN) as admin:
        admin.autocommit = True
        admin.cursor().execute("CHECKPOINT")
    admin.close()
    started = time.monotonic()
    try:
        if while_down is None:
            subprocess.run([*cluster, "restart"], check=True, capture_output=True, timeout=120)
        else:
            subprocess.run([*cluster, "stop"], check=True, capture_output=True, timeout=120)
            try:
                while_down()
            finally:
                subprocess.run([*cluster, "start"], check=True, capture_output=True, timeout=120)
    finally:
        deadline = time.monotonic() + 120
        while not accepts_connections() and time.monotonic() < deadline:
            time.sleep(0.1)
    assert accepts_connections(), "PostgreSQL did not come back"
    return time.monotonic() - started
