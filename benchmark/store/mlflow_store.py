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
from .base import ModelRecord, ResultStore, RunWriter, RunRecord

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


class MlflowRunLog(RunWriter):
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

    def local_folder(self) -> Path | None:
        for prefix in ("sqlite:///", "file://"):  # a database file, or MLflow's file store folder
            if self.uri.startswith(prefix):
                path = Path(self.uri[len(prefix):].split("?")[0])  # sqlite:////abs or sqlite:///relative
                return path.parent if prefix == "sqlite:///" else path
        return None

    def artifact_location(self, experiment_id: str) -> str | None:
        return retry(lambda: self.client.get_experiment(experiment_id)).artifact_location

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

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str]) -> RunWriter:
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

    def run_log(self, run_id: str) -> RunWriter:
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


    # -- trained models ----------------------------------------------------------------------------
    has_models = True

    def log_model(self, run_id, name, params, tags, build, step):
        import tempfile

        from mlflow.entities import LoggedModelOutput, LoggedModelStatus

        experiment_id = retry(lambda: self.client.get_run(run_id)).info.experiment_id
        model = retry(lambda: self.client.create_logged_model(
            experiment_id, name=name, source_run_id=run_id, params={k: str(v) for k, v in params.items()},
            tags={k: str(v) for k, v in tags.items()}, model_type=MODEL_TYPE))
        try:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp) / "model"
                build(folder, model.model_id, model.artifact_location)
                retry(lambda: self.client.log_model_artifacts(model.model_id, str(folder)))
            # The run's page lists the model, at the step its weights are from.
            retry(lambda: self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)]))
        except BaseException:
            retry(lambda: self.client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED))
            raise
        retry(lambda: self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY))
        return model.model_id

    def link_model_metrics(self, run_id, model_id, step):
        run = retry(lambda: self.client.get_run(run_id))
        # A target's metrics name it (test/<target>/acc); its dataset is the test split the run read.
        datasets = {}
        for entry in run.inputs.dataset_inputs if run.inputs else []:
            context = next((t.value for t in entry.tags if t.key == "mlflow.data.context"), "")
            dataset, _, split = entry.dataset.name.rpartition(":")
            if context == "test":
                datasets[schema.target_prefix(dataset) + "/"] = entry.dataset
            elif context == "validation" and split:
                datasets.setdefault(schema.SOURCE_VAL + "/", entry.dataset)  # one source: its validation split
        linked = []
        for key in run.data.metrics:
            if key.startswith("system/"):
                continue
            dataset = next((d for prefix, d in datasets.items() if key.startswith(prefix)), None)
            for m in retry(lambda: self.client.get_metric_history(run_id, key)):
                if m.step == step:  # the same timestamp: the run's history gains no point (MLflow's own way)
                    linked.append(Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id,
                                         dataset_name=dataset.name if dataset else None,
                                         dataset_digest=dataset.digest if dataset else None))
        for start in range(0, len(linked), 1000):
            retry(lambda: self.client.log_batch(run_id, metrics=linked[start:start + 1000]))
        return len(linked)

    def log_model_metrics(self, run_id, model_id, values, step, datasets=None):
        now = int(time.time() * 1000)
        linked = []
        for key, value in values.items():
            dataset = next((d for prefix, d in (datasets or {}).items() if key.startswith(prefix)), None)
            linked.append(Metric(key, float(value), now, step, model_id=model_id,
                                 dataset_name=dataset.name if dataset else None,
                                 dataset_digest=dataset.digest if dataset else None))
        for start in range(0, len(linked), 1000):
            retry(lambda: self.client.log_batch(run_id, metrics=linked[start:start + 1000]))

    def model_of_run(self, run_id):
        experiment_id = retry(lambda: self.client.get_run(run_id)).info.experiment_id
        found = retry(lambda: self.client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'"))
        ready = [_model_record(m) for m in found if _model_record(m).status == "READY"]  # (a status filter finds none)
        return ready[0] if ready else None

    def models(self, experiment_id, filter_string="", order_by=None):
        out, token = [], None
        while True:
            page = retry(lambda: self.client.search_logged_models([experiment_id], filter_string=filter_string or None,
                                                                 order_by=order_by, max_results=100,
                                                                 page_token=token))
            out.extend(_model_record(m) for m in page)
            token = page.token
            if not token:
                return out

    def resolve_model(self, reference):
        from ..core.errors import BenchmarkError

        version = None
        try:
            if reference.startswith("models:/"):
                rest = reference[len("models:/"):]
                if "@" in rest:
                    name, alias = rest.split("@", 1)
                    found = retry(lambda: self.client.get_model_version_by_alias(name, alias))
                    model_id, version = _version_model_id(found), found.version
                elif "/" in rest:
                    name, number = rest.split("/", 1)
                    found = retry(lambda: self.client.get_model_version(name, number))
                    model_id, version = _version_model_id(found), found.version
                else:
                    model_id = rest
            else:
                model_id = reference
            record = _model_record(retry(lambda: self.client.get_logged_model(model_id)))
        except Exception as exc:  # noqa: BLE001 - MLflow says "not found" in its own exception types
            raise BenchmarkError(f"no model {reference!r} in {self.uri} ({str(exc).splitlines()[0][:200]})") from None
        record.version = None if version is None else str(version)
        return record

    def download_model(self, model_id, path, destination):
        from mlflow.artifacts import download_artifacts

        destination.mkdir(parents=True, exist_ok=True)
        location = retry(lambda: self.client.get_logged_model(model_id)).artifact_location
        return Path(retry(lambda: download_artifacts(artifact_uri=f"{location.rstrip('/')}/{path}",
                                                     dst_path=str(destination), tracking_uri=self.uri)))

    def register(self, name, model, alias, description):
        try:
            retry(lambda: self.client.create_registered_model(name))
        except Exception as exc:  # noqa: BLE001 - it exists already (RESOURCE_ALREADY_EXISTS)
            if "already exists" not in str(exc).lower():
                raise
        versions = retry(lambda: self.client.search_model_versions(f"name = '{name}'"))
        held = next((v for v in versions if _version_model_id(v) == model.model_id), None)
        made = held is None
        if made:
            from mlflow.tracking._tracking_service.utils import _use_tracking_uri

            # MLflow's SQL registry resolves models:/<id> through the process's default tracking
            # URI, not the client's (its own TODO): this store's, for the call.
            with _use_tracking_uri(self.uri):
                held = retry(lambda: self.client.create_model_version(name, f"models:/{model.model_id}",
                                                                      run_id=model.run_id, description=description,
                                                                      model_id=model.model_id))
            # The model's page and the Models view list its versions from this tag, as mlflow.register_model sets it.
            from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

            listed = json.loads(model.tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
            listed.append({"name": name, "version": str(held.version)})
            retry(lambda: self.client.set_logged_model_tags(model.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(listed)}))
        elif held.description != description:
            retry(lambda: self.client.update_model_version(name, held.version, description=description))
        retry(lambda: self.client.set_registered_model_alias(name, alias, held.version))
        return str(held.version), made


def _version_model_id(version) -> str:
    """The LoggedModel a registered version holds (MLflow's SQL registry keeps it only in the source)."""
    return version.model_id or version.source.removeprefix("models:/")


MODEL_TYPE = "benchmark"  # the model_type of every LoggedModel a job makes


def _model_record(model) -> ModelRecord:
    return ModelRecord(model.model_id, model.name, model.source_run_id or "", str(getattr(model.status, "value", model.status)),
                       dict(model.params),
                       dict(model.tags), {(m.key, m.dataset_name or ""): m.value for m in model.metrics or []},
                       artifact_location=model.artifact_location)
