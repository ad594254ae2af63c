"""The names the two stores share: user attrs on the Optuna study and its trials, tags on the MLflow
runs and model versions, and how a value is written as an MLflow param.

One place, so that a writer and its readers cannot drift apart. The bottom floor: no imports.
"""

from __future__ import annotations

from typing import Any

# ---- the study's user attrs: what it remembers of its sweep
SPACE_SHA256 = "sweep.space_sha256"  # also a tag of the parent run
DATA_SHA256 = "sweep.data_sha256"
FIXED_PARAMS = "sweep.fixed_params"
CONFIG = "sweep.config"  # the search space's YAML text, as `sweep run` validated it
N_TRIALS = "sweep.n_trials"  # also a tag of the parent run
PARENT_RUN_ID = "sweep.parent_run_id"
PARENT_RUN_KEY = "sweep.parent_run_key"  # also a tag of the parent run: found by it when the id was not linked
PROMOTED_TRIAL = "sweep.promoted_trial"
FROM_STUDY = "sweep.from_study"  # the study it continued from (also on a carried trial and its run)

# ---- a trial's user attrs
WORKER = "sweep.worker"  # host:pid:start of the process that runs it
SURPLUS = "sweep.surplus"  # a trial refused a slot: failed, with no child run
ERROR = "sweep.error"  # also the tag of a failed trial's child run
FIT_TIME_S = "sweep.fit_time_s"
PREDICT_MS = "sweep.predict_ms"  # ms to predict 1,000 validation rows, first fold's model (also a version tag)
MODEL_BYTES = "sweep.model_bytes"  # the first fold's model, pickled; also a model version tag
SCORE_STD = "sweep.score_std"
RETRY_OF = "sweep.retry_of"
FROM_TRIAL = "sweep.from_trial"  # a carried trial's number in the study it came from (also a run tag)
TREES = "sweep.trees"  # trees (boosting iterations) its folds' models grew, mean per fold
TREES_ASKED = "sweep.trees_asked"  # what its params asked for: the rest was saved by early stops and pruning
CHEAP_START = "sweep.cheap_start"  # the enqueued first trial: the estimator's defaults (studies.start_cheap)
RUN_ID = "mlflow_run_id"  # the trial's child run

# ---- MLflow run tags (and model version tags)
PARENT_RUN_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"
STUDY_NAME = "sweep.study_name"
TRIAL_NUMBER = "sweep.trial_number"
TRIAL_STATE = "sweep.trial_state"
METRIC = "sweep.metric"
HOLDOUT_SCORE = "sweep.holdout_score"
PARETO = "sweep.pareto"  # "true" on the child runs of a two-objective study's Pareto front
CONSTRAINTS = "sweep.constraints"  # a model version's limits (JSON), as its sweep's constraints set them

# Logged for a conditional param that a trial left unsampled: a run missing a param would drop
# off the MLflow UI's parallel-coordinates plot.
INACTIVE = "inactive"


def param_value(value: Any) -> str:
    """A value as an MLflow param: Python's None as `None`, anything else as str() gives it."""
    return "None" if value is None else str(value)
