"""The result store: where runs are written and read back (benchmark.store.base): job states,
claims, metrics, artifacts. May import `benchmark.core` only (MLflow only in mlflow_store.py).

    open_store("sqlite:///results/mlflow.db")   MLflow (any tracking URI it accepts)
    open_store("jsonl:results/runs")            a folder of JSON lines, no MLflow
"""

from __future__ import annotations

import os

from ..core.paths import results_dir
from .base import (ABANDONED, HISTORY_COLUMNS, RESULT_COLUMNS, DatasetRef, JobState, ModelRecord, ResultStore, RunWriter,
                   RunRecord)

__all__ = ["ABANDONED", "DatasetRef", "HISTORY_COLUMNS", "RESULT_COLUMNS", "JobState", "ModelRecord", "ResultStore", "RunWriter", "RunRecord", "default_uri",
           "open_store"]


def default_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the SQLite file results/mlflow.db."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    results = results_dir().resolve()
    results.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{results / 'mlflow.db'}"


def open_store(uri: str | None = None) -> ResultStore:
    """The store at `uri` (default: default_uri()); `jsonl:FOLDER` is the JSON-lines backend."""
    from .jsonl_store import PREFIX, JsonlStore

    uri = uri or default_uri()
    if uri.startswith(PREFIX):
        return JsonlStore(uri[len(PREFIX):])
    from .mlflow_store import MlflowStore  # imports MLflow (a second or two): only when asked for

    return MlflowStore(uri)
