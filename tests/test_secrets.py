"""Passwords in the storage and tracking URIs never reach MLflow, the Optuna storage or the output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg2

from conftest import ROOT, small_space

PASSWORD = "s3cret-Pa55word"


def files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def database_text(database: str) -> str:
    """Every row of every table of a PostgreSQL database, as text."""
    rows = []
    with psycopg2.connect(f"postgresql://postgres@127.0.0.1:5432/{database}") as connection:
        with connection.cursor() as cursor:
            cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
            for (table,) in cursor.fetchall():
                cursor.execute(f'SELECT * FROM "{table}"')
                rows.append(repr(cursor.fetchall()))
    return "\n".join(rows)


def test_passwords_in_both_uris_appear_nowhere(tmp_path, mlflow_service, pg_database):
    host = mlflow_service.url.removeprefix("http://")
    tracking = f"http://sweeper:{PASSWORD}@{host}"
    storage = f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/{pg_database}"  # trust auth ignores it
    config = small_space(tmp_path, study="secret", experiment="secret", n_trials=3)
    result = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "run", "--config", str(config), "--n-jobs", "2",
         "--storage", storage, "--tracking-uri", tracking],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr

    # the tracking store: its database and every artifact, model included
    assert files_containing(mlflow_service.root, PASSWORD) == []
    assert PASSWORD not in database_text(mlflow_service.database)
    assert files_containing(tmp_path, PASSWORD) == []  # the sweep's folder: journal, exports
    assert PASSWORD not in database_text(pg_database)  # the Optuna storage

    # a refused URI is named, masked, in the error
    bad = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "run", "--config", str(config),
         "--storage", f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/none", "--tracking-uri", tracking],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2
    assert "postgresql://postgres:***@127.0.0.1:1/none" in bad.stderr
    assert PASSWORD not in bad.stdout + bad.stderr
