"""Bundled datasets and user CSV/Parquet files: holdout split and the preprocessing step.

A user's file comes as it is (string categories, missing values, an ID column to drop); the
preprocessing step built here becomes the first step of the promoted model, so the registered
model takes raw rows.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gbsweep.errors import ConfigError, first_line
from gbsweep.search_space import DataConfig


@dataclass(frozen=True)
class Dataset:
    X_train: Any  # pandas.DataFrame, raw columns
    y_train: Any  # numpy array
    X_test: Any
    y_test: Any
    preprocessor: Any  # an unfitted scikit-learn transformer, or None when the columns are ready
    digest: str  # sha256 of the rows and target, so workers can prove they hold the same data


def load(data: DataConfig, is_classifier: bool, cv: int, seed: int) -> Dataset:
    """Read the data, check the target fits the task, and split off the holdout."""
    from sklearn.model_selection import train_test_split

    frame, target = _read(data)
    _check_target(target, data, is_classifier, cv)
    X = frame.drop(columns=[target.name])
    stratify = target if is_classifier else None
    X_train, X_test, y_train, y_test = train_test_split(
        X, target, test_size=data.holdout, random_state=seed, stratify=stratify
    )
    return Dataset(
        X_train=X_train, y_train=y_train.to_numpy(), X_test=X_test, y_test=y_test.to_numpy(),
        preprocessor=_preprocessor(X) if data.path else None, digest=_digest(frame),
    )


def _read(data: DataConfig) -> tuple[Any, Any]:
    """(the frame with the target column kept, the target Series)."""
    if data.dataset:
        frame = _bundled(data.dataset, data.options)
        return frame, frame["target"]
    frame = _read_file(Path(data.path or ""))  # a path when there is no dataset (checked in the schema)
    problems = [f"data.drop: column {c!r} is not in {data.path}." for c in data.drop if c not in frame]
    if data.target not in frame:
        problems.append(f"data.target: column {data.target!r} is not in {data.path}."
                        f" Columns: {', '.join(map(str, frame.columns[:20]))}.")
    if problems:
        raise ConfigError(problems)
    frame = frame.drop(columns=list(data.drop))
    if frame.shape[1] < 2:
        raise ConfigError([f"data.path: {data.path} has no feature column besides the target."])
    return frame, frame[data.target]


def _bundled(name: str, options: dict) -> Any:
    """A bundled or synthetic dataset as one frame (its options were checked with the config)."""
    import sklearn.datasets as sk

    if name.startswith("make_"):
        kwargs = {"n_samples": 1000, "n_features": 20, "random_state": 0, **options}
        if name == "make_regression":
            kwargs.pop("n_classes", None)
        else:
            kwargs.pop("noise", None)
        try:
            X, y = getattr(sk, name)(**kwargs)
        except (TypeError, ValueError) as error:
            raise ConfigError([f"data.options: {name} refused them: {error}"]) from None
        import pandas as pd

        frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
        frame["target"] = y
        return frame
    return getattr(sk, f"load_{name}")(as_frame=True).frame


def _read_file(path: Path) -> Any:
    import pandas as pd

    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise ConfigError([f"data.path: must end in .csv or .parquet. Got {str(path)!r} instead."])
    if path.is_dir():
        raise ConfigError([f"data.path: {str(path)!r} is a folder, not a file."])
    if not path.is_file():
        raise ConfigError([f"data.path: file {str(path)!r} does not exist."])
    try:
        frame = reader(path)
    except Exception as error:  # pandas raises many types for one cause: the file is unreadable
        raise ConfigError([f"data.path: {str(path)!r} cannot be read: {first_line(error, None)}"]) from None
    if frame.empty:
        raise ConfigError([f"data.path: {str(path)!r} has no rows."])
    return frame


def _check_target(target: Any, data: DataConfig, is_classifier: bool, cv: int) -> None:
    from pandas.api.types import is_numeric_dtype
    from sklearn.utils.multiclass import type_of_target

    where = f"data.target ({target.name!r})"
    if target.isna().any():
        raise ConfigError([f"{where}: must have no missing values. Got {int(target.isna().sum())} instead."])
    kind = type_of_target(target)
    if is_classifier and kind.startswith("continuous"):
        raise ConfigError([f"{where}: holds continuous values, so it needs a Regressor estimator,"
                           " not a Classifier."])
    if not is_classifier and not is_numeric_dtype(target):
        raise ConfigError([f"{where}: must be numeric for a Regressor. Got {target.dtype} instead."])
    classes = target.nunique()
    if is_classifier and classes < 2:
        raise ConfigError([f"{where}: must hold at least 2 classes for a Classifier. Got {classes} instead."])
    train_rows = len(target) - math.ceil(len(target) * data.holdout)  # as train_test_split splits
    if not is_classifier and train_rows < cv:  # KFold needs a row per fold (class counts imply it below)
        needs = f"needs at least {cv} training rows for cv={cv} and holdout={data.holdout}"
        raise ConfigError([f"{where}: {needs}. Got {train_rows} instead."])
    if is_classifier:
        smallest = target.value_counts().min()
        needed = int(cv / (1 - data.holdout)) + 2
        if smallest < needed and _looks_continuous(target):
            raise ConfigError([f"{where}: holds {classes} distinct numbers, most of them in fewer than"
                               f" {needed} rows: it looks continuous, not like classes; use"
                               " GradientBoostingRegressor or HistGradientBoostingRegressor."])
        if smallest < needed:
            raise ConfigError([f"{where}: every class needs at least {needed} rows for cv={cv}"
                               f" and holdout={data.holdout}. Got {smallest} instead."])


def _looks_continuous(target: Any) -> bool:
    """Whole numbers such as a weight in grams: numeric, and more distinct values than a class
    label set has (over 20), most of them rare."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    if not is_numeric_dtype(target) or is_bool_dtype(target):
        return False
    counts = target.value_counts()
    return len(counts) > 20 and (counts < 5).mean() > 0.5


def _preprocessor(X: Any) -> Any:
    """Impute numeric columns; impute and one-hot encode the others."""
    from pandas.api.types import is_numeric_dtype
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    numeric = [c for c in X.columns if is_numeric_dtype(X[c]) and X[c].dtype != bool]
    other = [c for c in X.columns if c not in numeric]
    categorical = make_pipeline(
        SimpleImputer(strategy="most_frequent"),
        OneHotEncoder(handle_unknown="ignore", sparse_output=False),
    )
    return ColumnTransformer(
        [("numeric", SimpleImputer(strategy="median", keep_empty_features=True), numeric),
         ("categorical", categorical, other)],
        verbose_feature_names_out=False,
    )


def _digest(frame: Any) -> str:
    import pandas as pd

    rows = pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()
    columns = "\0".join(map(str, frame.columns)).encode()
    return hashlib.sha256(columns + rows).hexdigest()
