"""The MLflow backend of the result store (the only module that imports MLflow).

Any tracking URI MLflow accepts: a SQLite file (the default, `sqlite:///results/mlflow.db`), a
tracking server (`http://host:5000`), a folder. Every call goes through MlflowClient with an
explicit run id, and is retried while SQLite says the database is locked (many writers at once).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from . import schema
from .base import ResultStore, RunLog, RunRecord

T = TypeVar("T")
_READY_STORES: set[str] = set()  # SQLite stores this process has opened (created and migrated)


def retry(fn: Callable[[], T], attempts: int = 20) -> T:
    """Retry an MLflow call while SQLite says the database is locked."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - MLflow wraps the driver's error in its own types
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(min(2.0, 0.05 * 2**attempt))
    raise AssertionError("unreachable")


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def new_client(uri: str) -> MlflowClient:
    db = _sqlite_path(uri)
    if db is None or uri in _READY_STORES:
        return MlflowClient(tracking_uri=uri)
    # MLflow creates and migrates a new SQLite store when a process first opens it; two processes
    # doing that at once break each other's migration (measured: 5 of 5 tries with four
    # processes). One at a time, under a lock file beside the database.
    from filelock import FileLock

    db.parent.mkdir(parents=True, exist_ok=True)
    lock: FileLock | None = FileLock(f"{db}.lock")
    try:
        lock.acquire()
    except OSError:  # a read-only folder (someone else's results): nobody creates a store there
        lock = None
    try:
        client = MlflowClient(tracking_uri=uri)
        retry(lambda: client.search_experiments(max_results=1))
    finally:
        if lock is not None:
            lock.release()
    _READY_STORES.add(uri)
    return client


class MlflowRunLog(RunLog):
    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in values.items()]
        retry(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def params(self, values: dict[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in values.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            retry(lambda: self.client.log_batch(self.run_id, params=items[start:start + 100]))

    def tags(self, values: dict[str, str]) -> None:
        retry(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in values.items()]))

    def figure(self, name: str, figure: Any) -> None:
        import matplotlib.pyplot as plt

        retry(lambda: self.client.log_figure(self.run_id, figure, f"figures/{name}"))
        plt.close(figure)

    def text(self, name: str, content: str) -> None:
        retry(lambda: self.client.log_text(self.run_id, content, name))

    def artifacts(self, folder: Path, under: str) -> None:
        retry(lambda: self.client.log_artifacts(self.run_id, str(folder), under))

    def inputs(self, datasets) -> None:
        entries = [DatasetInput(Dataset(d.name, d.digest, "local", json.dumps({"path": d.source})),
                                [InputTag("mlflow.data.context", d.context)]) for d in datasets]
        retry(lambda: self.client.log_inputs(self.run_id, datasets=entries))

    def finish(self, status: str) -> None:
        retry(lambda: self.client.set_terminated(self.run_id, status))


# The view `benchmark ui` links to (MLflow's shared-view state: search facets and UI state; a
# column is `<params|metrics|attributes|tags>.`<key>``). Sorted by mean unseen accuracy, best
# first: MLflow's UI nests child runs under their parent only when sorted by start time, so every
# job run shows as its own row (the grid runs, which have no such metric, come last).
JOBS_VIEW_STATE = {
    "orderByKey": f"metrics.`{schema.MEAN_UNSEEN_ACC}`", "orderByAsc": False,
    "selectedColumns": [f"params.`{schema.METHOD}`", f"params.`{schema.SOURCE}`", f"params.`{schema.SEED}`",
                        f"metrics.`{schema.MEAN_UNSEEN_ACC}`", f"metrics.`{schema.MEAN_ACC}`",
                        f"tags.`{schema.COLLAPSED}`", "attributes.`Duration`"],
}


def _record(run) -> RunRecord:
    inputs = [(d.dataset.name, next((t.value for t in d.tags if t.key == "mlflow.data.context"), ""))
              for d in (run.inputs.dataset_inputs if run.inputs else [])]
    return RunRecord(run.info.run_id, run.info.status, run.info.start_time, run.info.end_time, dict(run.data.tags),
                     dict(run.data.params), dict(run.data.metrics), inputs)


class MlflowStore(ResultStore):
    def __init__(self, uri: str):
        self.uri = uri
        self._client: MlflowClient | None = None

    def __getstate__(self) -> dict:  # shipped to workers without its connection
        return {"uri": self.uri, "_client": None}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = new_client(self.uri)
        return self._client

    def experiment(self, name: str, create: bool = True) -> str | None:
        found = retry(lambda: self.client.get_experiment_by_name(name))
        if found is not None:
            if create and found.tags.get(schema.SHARED_VIEW_PREFIX + schema.JOBS_VIEW) != json.dumps(JOBS_VIEW_STATE):
                self._mark_training(found.experiment_id)  # made before the tags existed, or by an older view
            return found.experiment_id
        if not create:
            return None
        db = _sqlite_path(self.uri)
        # Artifacts beside the database (not in the working folder, MLflow's default).
        artifacts = (db.parent / "mlartifacts").resolve().as_uri() if db else None
        try:
            experiment_id = retry(lambda: self.client.create_experiment(name, artifact_location=artifacts))
        except Exception:  # noqa: BLE001 - created concurrently by another process
            return retry(lambda: self.client.get_experiment_by_name(name)).experiment_id
        self._mark_training(experiment_id)
        return experiment_id

    def _mark_training(self, experiment_id: str) -> None:
        """Open the experiment on its training runs in MLflow's UI, with a view whose columns are
        what a job is compared by (method, source, seed, mean unseen and mean accuracy)."""
        self._set_experiment_tag(experiment_id, schema.EXPERIMENT_KIND, schema.TRAINING_RUNS)
        self._set_experiment_tag(experiment_id, schema.SHARED_VIEW_PREFIX + schema.JOBS_VIEW, json.dumps(JOBS_VIEW_STATE))

    def _set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        """Set a tag that other processes may be setting to the same value at the same moment (two
        invocations of a grid opening a new experiment): MLflow's server writes a tag by reading,
        then inserting, so the later of two writers fails on the table's UNIQUE constraint. The tag
        is then set, as wanted; any other failure, or another value, is an error."""
        try:
            retry(lambda: self.client.set_experiment_tag(experiment_id, key, value))
        except Exception:  # noqa: BLE001 - the server's IntegrityError comes back as a RestException
            if self.experiment_tags(experiment_id).get(key) != value:
                raise

    def experiment_tags(self, experiment_id: str) -> dict[str, str]:
        return dict(retry(lambda: self.client.get_experiment(experiment_id)).tags)

    def experiment_names(self) -> list[str]:
        return [e.name for e in retry(lambda: self.client.search_experiments())]

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str]) -> RunLog:
        run = retry(lambda: self.client.create_run(experiment_id, tags=tags, run_name=name))
        return MlflowRunLog(self.client, run.info.run_id)

    @contextlib.contextmanager
    def system_metrics(self, run_id: str, every_s: float):
        if every_s <= 0:
            yield
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # MLflow publishes a sample only after a full interval, so a job shorter than `every_s`
        # has none; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, when set, overrides `every_s`.
        monitor = SystemMetricsMonitor(run_id, sampling_interval=every_s, tracking_uri=self.uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def run_log(self, run_id: str) -> RunLog:
        return MlflowRunLog(new_client(self.uri), run_id)

    def runs(self, experiment_id: str, *, job_hash: str | None = None, kind: str | None = None,
             jobs_only: bool = False) -> list[RunRecord]:
        if job_hash is not None:
            query = f"tags.{schema.JOB_HASH} = '{job_hash}'"
        elif kind is not None:
            query = f"tags.{schema.KIND} = '{kind}'"
        else:
            query = f"tags.{schema.JOB_HASH} != ''" if jobs_only else ""
        out, token = [], None
        while True:  # page through: a grid can hold more runs than one page
            page = retry(lambda: self.client.search_runs([experiment_id], query, max_results=1000, page_token=token))
            out.extend(_record(r) for r in page)
            token = page.token
            if not token:
                return out

    def delete_run(self, run_id: str) -> None:
        retry(lambda: self.client.delete_run(run_id))

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in retry(lambda: self.client.get_metric_history(run_id, key))]

    def run(self, run_id: str) -> RunRecord:
        from ..core.errors import BenchmarkError

        try:
            r = retry(lambda: self.client.get_run(run_id))
        except Exception as exc:  # noqa: BLE001 - MLflow says "not found" in its own exception types
            raise BenchmarkError(f"no run {run_id!r} in {self.uri} ({type(exc).__name__})") from None
        return _record(r)

    def download(self, run_id: str, path: str, destination: Path) -> Path:
        destination.mkdir(parents=True, exist_ok=True)
        return Path(retry(lambda: self.client.download_artifacts(run_id, path, str(destination))))

    def artifact_paths(self, run_id: str, folder: str) -> list[str]:
        out = []
        for item in retry(lambda: self.client.list_artifacts(run_id, folder)):
            out.extend(self.artifact_paths(run_id, item.path) if item.is_dir else [item.path])
        return out

