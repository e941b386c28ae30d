"""The run record's primitives, which each backend implements: experiments, runs written
(`RunWriter`) and read (`RunRecord`), their artifacts; and what a trained model is (`ModelRecord`)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any




@dataclass
class ModelRecord:
    """A trained model as the store holds it (an MLflow LoggedModel): metrics by (key, dataset
    name), the dataset "" for a metric linked to none."""

    model_id: str
    name: str
    run_id: str
    status: str
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[tuple[str, str], float] = field(default_factory=dict)
    version: str | None = None  # the registered version it was found by, when it was
    artifact_location: str = ""

    def metric(self, key: str) -> float | None:
        """The value of `key` whatever dataset it is linked to (keys name their target already)."""
        return next((v for (k, _), v in self.metrics.items() if k == key), None)


@dataclass
class RunRecord:
    """One run as read back from a store (metrics: the latest value of each key)."""

    run_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED
    start_time: int  # ms since the epoch
    end_time: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (dataset name, context) it read


class RunWriter(abc.ABC):
    """Writes to one run. Methods see only `metrics` and `figure` (benchmark.training.method.RunWriter)."""

    run_id: str

    @abc.abstractmethod
    def metrics(self, values: dict[str, float], step: int | None = None) -> None: ...

    @abc.abstractmethod
    def params(self, values: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def tags(self, values: dict[str, str]) -> None: ...

    @abc.abstractmethod
    def figure(self, name: str, figure: Any) -> None:
        """Save a matplotlib figure as `figures/<name>` and close it."""

    @abc.abstractmethod
    def text(self, name: str, content: str) -> None: ...

    @abc.abstractmethod
    def artifacts(self, folder: Path, under: str) -> None:
        """Copy every file below `folder` into the run, below `under`."""

    @abc.abstractmethod
    def inputs(self, datasets: list[DatasetRef]) -> None:
        """Record the datasets the run read (MLflow shows them as the run's inputs)."""

    @abc.abstractmethod
    def finish(self, status: str) -> None: ...


@dataclass(frozen=True)
class DatasetRef:
    """A dataset split a run read: its name, the digest of what was read (the split's
    fingerprint; for synth5 the generated domain's digest, the same on every machine), where it
    lives, and its role ("train", "validation" or "test")."""

    name: str
    digest: str
    source: str
    context: str


class Records(abc.ABC):
    """What a backend implements: experiments, runs written and read, their artifacts."""

    uri: str

    # -- primitives a backend implements ------------------------------------------------------
    @abc.abstractmethod
    def experiment(self, name: str, create: bool = True) -> str | None:
        """The id of the experiment `name` (created when absent and `create`; else None)."""

    @abc.abstractmethod
    def experiment_names(self) -> list[str]: ...

    @abc.abstractmethod
    def create_run(self, experiment_id: str, name: str, tags: dict[str, str]) -> RunWriter: ...

    @abc.abstractmethod
    def run_log(self, run_id: str) -> RunWriter:
        """A writer for an existing run (its own connection: safe beside another thread's)."""

    @abc.abstractmethod
    def runs(self, experiment_id: str, *, job_hash: str | None = None, kind: str | None = None,
             jobs_only: bool = False) -> list[RunRecord]:
        """Runs of the experiment: of one job hash, of one kind ("grid"), or every job run."""

    @abc.abstractmethod
    def delete_run(self, run_id: str) -> None: ...

    @abc.abstractmethod
    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of every value logged for `key`, in the order logged."""

    @abc.abstractmethod
    def run(self, run_id: str) -> RunRecord:
        """One run by id (a BenchmarkError naming the store when there is none)."""

    @abc.abstractmethod
    def download(self, run_id: str, path: str, destination: Path) -> Path:
        """A copy of the run's artifact file or folder `path` below `destination`; its local path."""

    @abc.abstractmethod
    def artifact_paths(self, run_id: str, folder: str) -> list[str]:
        """Paths of the files a run holds below `folder` (relative to the run's artifact root)."""

    def local_folder(self) -> Path | None:
        """The folder this store lives in when it is on this machine's file system (None for a
        tracking server): jobs keep their epoch checkpoints beside it."""
        return None

    def artifact_location(self, experiment_id: str) -> str | None:
        """Where the experiment's artifacts go (a folder, or a URI such as s3:// or
        mlflow-artifacts:/), which every worker of a tracking server's grid can write."""
        return None
