"""MLflow for the sweep as a whole: the store's health, the parent run, the results logged on it,
and the promotion of the best model in the Model Registry. (Child runs: child_runs.py.)

All calls go through MlflowClient with explicit run ids; the fluent API is used once, to log the
promoted model, because MLflow only links a logged model to a run through it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gbsweep import advice, keys
from gbsweep.errors import ConfigError, first_line, mask_uri, public_url
from gbsweep.search_space import MEASURED

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from gbsweep.search_space import SweepConfig

HEALTH_TIMEOUT_S = 5


def use_quick_client_settings() -> None:
    """MLflow client settings for every process of a sweep; set before the logger process forks."""
    # stdout is for data; against a server MLflow would print run links there, at the cost of
    # one more request per finished run.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # MLflow retries a lost server for minutes per request by default; the child-run logger
    # retries on its own, off the trials' path, so each request gives up sooner.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def precheck(uri: str, experiment: str) -> bool:
    """Check the tracking store before anything is created, without importing MLflow (that takes a
    second, which the recorder process spends instead while the first trials run).

    Raises ConfigError for a store that surely cannot be used; returns False when the check
    settles it, True when only opening the store can tell (the sweep then waits for that).
    """
    if uri.startswith(("http://", "https://")):
        return not _server_answers(uri, experiment)
    if uri.startswith("sqlite:///"):
        return not _sqlite_usable(Path(uri[len("sqlite:///"):]), uri)
    return True


def local_path(uri: str) -> str:
    """The database file of a `sqlite:` tracking URI ('' for any other store)."""
    return uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""


def create_sqlite_store_whole(uri: str) -> None:
    """Make a new `sqlite:` store's file whole before it appears under its name.

    MLflow creates a new SQLite store in 68 migrations (3.17) that SQLite does not run as one
    transaction; a process killed midway (make chaos killed a recorder there) left a file that every
    later open refused ('table _alembic_tmp_jobs already exists'). So the file is made under a side
    name and linked in place only once complete; when another process linked its own first, ours is
    dropped. It is a copy of an empty store migrated once per MLflow version (the migrations take
    1.4 s, which trial 0 waited for), else migrated here. MLflow adds the Default experiment at the
    first open, as for any new store."""
    path = local_path(uri)
    if not path or os.path.exists(path):
        return
    try:  # what MLflow's own store runs on a new database; a private name, so an MLflow that moved it
        from mlflow.store.db.utils import _initialize_tables  # creates its store in place, as before
    except ImportError:
        return

    def migrate(side: str) -> None:
        import sqlalchemy

        engine = sqlalchemy.create_engine(f"sqlite:///{side}")
        try:
            _initialize_tables(engine)
        finally:
            engine.dispose()

    template = _empty_store_template(migrate)
    _make_whole(path, (lambda side: shutil.copyfile(template, side)) if template else migrate)


def _empty_store_template(migrate: Callable[[str], None]) -> str:
    """The cached empty store of this MLflow version, made on first use; '' when there is no
    writable cache folder."""
    from mlflow.version import VERSION

    try:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sweep"
        template = folder / f"mlflow-{VERSION}.db"
        if not template.exists():
            folder.mkdir(parents=True, exist_ok=True)
            _make_whole(str(template), migrate)
    except (OSError, RuntimeError):  # RuntimeError: no home folder (a container's user without one)
        return ""
    return str(template)


def _make_whole(path: str, make: Callable[[str], object]) -> None:
    """Make the file `path` under a side name and link it in place once `make` has finished."""
    _drop_dead_side_files(path)
    side = f"{path}.new-{os.getpid()}"
    try:
        make(side)
        _put_in_place(side, path)
    finally:
        Path(side).unlink(missing_ok=True)  # also when it could not be made (a full disk)


def _put_in_place(side: str, path: str) -> None:
    try:
        os.link(side, path)  # unlike a rename, never replaces a file another process made meanwhile
    except FileExistsError:
        pass  # that process's file is used
    except OSError:  # a file system without hard links: a rename, unless the file appeared meanwhile
        if not os.path.exists(path):
            os.rename(side, path)


def _drop_dead_side_files(path: str) -> None:
    """Side files (and their SQLite journals) of creators that were killed; a SQLite store lives on
    one machine's disk, so the pid tells."""
    prefix = f"{Path(path).name}.new-"
    for side in Path(path).parent.glob(f"{prefix}*"):
        pid = side.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            side.unlink(missing_ok=True)


def _server_answers(uri: str, experiment: str) -> bool:
    """One quick request to the REST API (MLflow's own client would retry an absent server for
    minutes); False when the answer is not a clear yes or no (TLS set-ups: MLflow's client decides)."""
    import ssl
    import urllib.error
    import urllib.parse
    import urllib.request

    query = urllib.parse.urlencode({"experiment_name": experiment})
    request = urllib.request.Request(f"{public_url(uri)}/api/2.0/mlflow/experiments/get-by-name?{query}",
                                     headers=_auth_headers(uri))
    try:
        with urllib.request.urlopen(request, timeout=HEALTH_TIMEOUT_S) as response:
            response.read()
    except urllib.error.HTTPError as error:
        if error.code == 404 and b"RESOURCE_DOES_NOT_EXIST" in error.read():
            return True  # the experiment is not there yet: the server answered
        refused = "refused the credentials" if error.code in (401, 403) else "answered"
        raise ConfigError([f"tracking URI {mask_uri(uri)}: cannot be used: the server {refused}"
                           f" (HTTP {error.code})."]) from None
    except (ssl.SSLError, ssl.CertificateError):
        return False
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        if isinstance(reason, ssl.SSLError):
            return False
        raise ConfigError([f"tracking URI {mask_uri(uri)}: cannot be used: no answer from"
                           f" the server ({reason})."]) from None
    return True


def _auth_headers(uri: str) -> dict[str, str]:
    """The credentials MLflow's client would send: in the URI, else MLFLOW_TRACKING_USERNAME and
    _PASSWORD, else MLFLOW_TRACKING_TOKEN."""
    import base64
    import urllib.parse

    parts = urllib.parse.urlsplit(uri)
    user = parts.username or os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = parts.password or os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        pair = urllib.parse.unquote(f"{user}:{password}").encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _sqlite_usable(path: Path, uri: str) -> bool:
    """A new database in a folder that can take it; an existing one that holds MLflow's tables."""
    import sqlite3

    if not path.exists():
        folder = path.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ConfigError([f"tracking URI {mask_uri(uri)}: cannot be used: the folder {str(folder)!r}"
                               f" {'is not writable' if folder.is_dir() else 'does not exist'}."])
        return True
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return False  # MLflow says what is wrong with it
    cut_off = sorted(name for name in tables if name.startswith("_alembic_tmp_"))
    if cut_off:  # MLflow would fail on it at every open, long after the trials started
        raise ConfigError([f"tracking URI {mask_uri(uri)}: cannot be used: a migration of its tables was cut off"
                           f" midway (it left the table {cut_off[0]}); restore the file from a backup, or move"
                           " it away and run the same command: a new store is made and every trial is logged"
                           " to it again."])
    return {"experiments", "runs", "alembic_version"} <= tables


@dataclass(frozen=True)
class Promotion:
    version: str
    alias: str  # "champion" or "challenger"


class Tracker:
    """The sweep's view in one MLflow tracking store."""

    def __init__(self, tracking_uri: str) -> None:
        from mlflow import MlflowClient

        use_quick_client_settings()
        create_sqlite_store_whole(tracking_uri)
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def check_reachable(self) -> None:
        """Fail when the store cannot be used (a quick check first: MLflow's own client would
        retry an absent server for minutes)."""
        precheck(self.uri, "Default")
        try:
            self.client.search_experiments(max_results=1)
        except Exception as error:  # MLflow wraps network and database errors in many types
            raise ConfigError([f"tracking URI {mask_uri(self.uri)}: cannot be used: {first_line(error)}"]) from None

    def experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            return self.client.create_experiment(name)
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def parent_run(self, config: SweepConfig, known_run_id: str | None, key: str | None = None,
                   resume: bool = True) -> str:
        """The study's parent run: the known one when this store has it, else the one tagged with
        the study's `key` (created, then not linked: its sweep was killed), else a new one.

        `resume` marks it RUNNING again, for the trials about to run.
        """
        found = known_run_id if known_run_id and self._run_exists(known_run_id) else None
        if found is None and key:
            found = self._run_tagged(config.experiment, key)  # MLflow searches active runs only
        if found:
            if resume:
                self.client.update_run(found, status="RUNNING")
                self.client.set_tag(found, keys.N_TRIALS, str(config.n_trials))
            return found
        from mlflow.entities import Param, RunTag

        experiment_id = self.experiment_id(config.experiment)
        run = self.client.create_run(experiment_id, run_name=config.study_name, tags={
            keys.STUDY_NAME: config.study_name,
            keys.SPACE_SHA256: config.space_sha256(),
            keys.N_TRIALS: str(config.n_trials),
            **({keys.PARENT_RUN_KEY: key} if key else {}),
        })
        params = [Param(k, keys.param_value(v)) for k, v in config.settings().items()]
        self.client.log_batch(run.info.run_id, params=params, tags=[RunTag(keys.NOTE_TAG, _note(config))])
        self.client.log_text(run.info.run_id, config.source, "search_space.yaml")
        return run.info.run_id

    def _run_tagged(self, experiment: str, key: str) -> str | None:
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return None
        runs = self.client.search_runs([found.experiment_id], f"tags.`{keys.PARENT_RUN_KEY}` = '{key}'",
                                       max_results=1)
        return runs[0].info.run_id if runs else None

    def _run_exists(self, run_id: str, attempts: int = 4) -> bool:
        """Whether the store has the run; only its answer "no such run" is a no. A failing store
        (a server whose database restarts) is asked again and then raises: taking its error for
        a no would give the study a second parent run."""
        from mlflow.exceptions import MlflowException

        for attempt in range(attempts):
            try:
                return self.client.get_run(run_id).info.lifecycle_stage == "active"
            except MlflowException as error:
                if "RESOURCE_DOES_NOT_EXIST" in str(error.error_code):
                    return False
                if attempt == attempts - 1:
                    raise
                time.sleep(0.5 * 2 ** attempt)
        return False

    def artifact_folder(self, run_id: str) -> str:
        """The folder of the run's artifacts, when it is on this machine ('' when not, or unknown)."""
        import urllib.parse

        try:
            uri = self.client.get_run(run_id).info.artifact_uri or ""
        except Exception:  # noqa: BLE001 (only a message wants it; the store may be failing)
            return ""
        parts = urllib.parse.urlsplit(uri)
        return urllib.parse.unquote(parts.path) if parts.scheme in ("", "file") else ""

    def log_results(self, parent_run_id: str, metric: str, best: dict, trials: Any,
                    best_so_far: list[tuple[int, float]]) -> None:
        """Best params (YAML and JSON), the trials table and the best-so-far curve (trial number,
        best metric up to it) on the parent."""
        import yaml
        from mlflow.entities import Metric

        self.client.log_dict(parent_run_id, best, "best_params.json")
        self.client.log_text(parent_run_id, yaml.safe_dump(best, sort_keys=False), "best_params.yaml")
        self.client.log_text(parent_run_id, trials.to_csv(index=False), "trials.csv")
        now = int(time.time() * 1000)
        key = f"best_{metric}"
        logged = {m.step for m in self.client.get_metric_history(parent_run_id, key)}
        history = [Metric(key, value, now, step) for step, value in best_so_far if step not in logged]
        for start in range(0, len(history), 1000):  # MLflow takes at most 1000 metrics a batch
            self.client.log_batch(parent_run_id, metrics=history[start:start + 1000])

    def log_advice(self, parent_run_id: str, lines: list[str]) -> None:
        """The range advice as `advice.txt`; a file saying there is none replaces an earlier run's."""
        self.client.log_text(parent_run_id, advice.as_text(lines), advice.ARTIFACT)

    def finish_parent(self, parent_run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(parent_run_id, status=status)

    def promote(self, config: SweepConfig, parent_run_id: str, model: Any, X_example: Any,
                holdout_score: float, trial_number: int, measured: dict | None = None) -> Promotion:
        """Log the model on the parent run, register it and point an alias at the new version:
        @champion when it beats the champion, or when the champion is not comparable (another
        metric) or not known to keep within this sweep's constraints; else @challenger.
        `measured`: the trial's numbers (predict_ms, model_bytes), kept as the version's tags."""
        name = config.model_name
        champion = self._champion(name)
        tags = {keys.STUDY_NAME: config.study_name, keys.TRIAL_NUMBER: str(trial_number),
                keys.METRIC: config.metric, keys.HOLDOUT_SCORE: repr(holdout_score),
                **{MEASURED[k]: repr(v) for k, v in (measured or {}).items() if k in MEASURED}}
        if config.constraints:
            tags[keys.CONSTRAINTS] = json.dumps(config.constraints)
        version = self._registered(config, parent_run_id, trial_number) \
            or self._log_and_register(config, parent_run_id, model, X_example, tags)
        beats = champion is None or str(champion.version) == version or (
            champion.tags.get(keys.METRIC) != config.metric or not _within(champion.tags, config.constraints)
            or holdout_score > float(champion.tags.get(keys.HOLDOUT_SCORE, "-inf"))
        )
        alias = "champion" if beats else "challenger"
        self.client.set_registered_model_alias(name, alias, version)
        self.client.log_metric(parent_run_id, f"holdout_{config.metric}", holdout_score)
        return Promotion(version, alias)

    def _registered(self, config: SweepConfig, parent_run_id: str, trial_number: int) -> str | None:
        """The version this study's parent run registered for this trial already, when the study
        could not note it (a full disk or a kill right after): promoted once, not twice."""
        found = [v for v in self.client.search_model_versions(f"run_id = '{parent_run_id}'")  # a hex id: no quoting
                 if v.name == config.model_name and v.tags.get(keys.TRIAL_NUMBER) == str(trial_number)]
        return str(found[0].version) if found else None

    def _champion(self, name: str) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, "champion")
        except MlflowException:
            return None

    def _log_and_register(self, config: SweepConfig, parent_run_id: str, model: Any, X_example: Any,
                          tags: dict) -> str:
        import mlflow
        import mlflow.sklearn
        from mlflow.exceptions import MlflowException
        from mlflow.models import infer_signature

        mlflow.set_tracking_uri(self.uri)
        signature = infer_signature(X_example, model.predict(X_example))
        with mlflow.start_run(run_id=parent_run_id):
            info = mlflow.sklearn.log_model(
                model, name="model", signature=signature, input_example=X_example,
                pip_requirements=pip_requirements(),
                serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
                skops_trusted_types=trusted_types(model),
            )
        try:
            self.client.create_registered_model(config.model_name)
        except MlflowException as error:
            if "ALREADY_EXISTS" not in str(error.error_code):
                raise
        version = self.client.create_model_version(
            config.model_name, source=info.model_uri, run_id=parent_run_id, tags=tags,
            model_id=info.model_id,
        )
        return str(version.version)


def _note(config: SweepConfig) -> str:
    return (f"Sweep `{config.study_name}`: {config.estimator} on {config.data.label}, "
            f"{config.metric} over {config.cv} folds. Each child run is one Optuna trial.")


def trusted_types(model: Any) -> list[str]:
    """Exactly the types skops must be told to trust to load this model, nothing wider."""
    import skops.io

    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in
            ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")]


def _within(version_tags: dict[str, str], limits: dict[str, float]) -> bool:
    """Whether a model version's numbers, as its tags keep them, are known to meet these limits."""
    values = [version_tags.get(MEASURED[name]) for name in limits]
    return all(v is not None and float(v) <= limit for v, limit in zip(values, limits.values(), strict=True))
