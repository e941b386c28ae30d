"""Everything the harness writes to MLflow, through MlflowClient with explicit run ids.

Layout (design.md): one experiment per protocol, one parent run per `benchmark run`, one child
run per job tagged `job_hash`, `method`, `source`, `seed`, `protocol`. A job's run status is the
truth about it: RUNNING, FINISHED, or FAILED with the reason in the `error` tag. Workers on other
processes or machines log straight to the same tracking URI.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from .paths import results_dir

T = TypeVar("T")
SAFE_SEP = "."  # dataset names like synth5/studio become synth5.studio in metric keys


def default_tracking_uri() -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    results = results_dir().resolve()
    results.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{results / 'mlflow.db'}"


def metric_name(dataset: str) -> str:
    return dataset.replace("/", SAFE_SEP)


def retry(fn: Callable[[], T], attempts: int = 20) -> T:
    """Retry an MLflow call while SQLite says the database is locked (many writers at once)."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - MLflow wraps the driver's error in its own types
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(min(2.0, 0.05 * 2**attempt))
    raise AssertionError("unreachable")


_READY_STORES: set[str] = set()


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    if not tracking_uri.startswith("sqlite:///") or tracking_uri in _READY_STORES:
        return MlflowClient(tracking_uri=tracking_uri)
    # MLflow creates and migrates a new SQLite store when a process first opens it; two processes
    # doing that at once break each other's migration (measured: 5 of 5 tries with four
    # processes). One at a time, under a lock file beside the database.
    from filelock import FileLock

    db = Path(tracking_uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    lock: FileLock | None = FileLock(f"{db}.lock")
    try:
        lock.acquire()
    except OSError:  # a read-only folder (someone else's results): nobody creates a store there
        lock = None
    try:
        c = MlflowClient(tracking_uri=tracking_uri)
        retry(lambda: c.search_experiments(max_results=1))
    finally:
        if lock is not None:
            lock.release()
    _READY_STORES.add(tracking_uri)
    return c


def experiment_id(tracking_uri: str, name: str) -> str:
    c = client(tracking_uri)
    found = retry(lambda: c.get_experiment_by_name(name))
    if found is not None:
        return found.experiment_id
    artifacts = None
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        artifacts = (db.parent / "mlartifacts").resolve().as_uri()
    try:
        return retry(lambda: c.create_experiment(name, artifact_location=artifacts))
    except Exception:  # noqa: BLE001 - created concurrently by another process
        return retry(lambda: c.get_experiment_by_name(name)).experiment_id


def process_tags() -> dict[str, str]:
    import psutil

    me = psutil.Process()
    return {"host": socket.gethostname(), "pid": str(me.pid), "pid_started": f"{me.create_time():.3f}"}


def process_alive(tags: dict[str, str]) -> bool | None:
    """Whether the process that owns a RUNNING run still lives: True/False on this host, None elsewhere."""
    import psutil

    if tags.get("host") != socket.gethostname():
        return None
    try:
        proc = psutil.Process(int(tags.get("pid", "-1")))
        return abs(proc.create_time() - float(tags.get("pid_started", "0"))) < 1.0
    except (psutil.NoSuchProcess, ValueError):
        return False


# A running job refreshes its `heartbeat` tag (a Unix time) this often; a RUNNING run on another
# host whose heartbeat is older than HEARTBEAT_STALE_S is taken as dead (a lost node, a killed
# worker). Ten missed beats, so a briefly locked store or a skewed clock does not count.
HEARTBEAT_EVERY_S = 60.0
HEARTBEAT_STALE_S = 600.0


def run_alive(tags: dict[str, str], now: float | None = None) -> bool | None:
    """Whether a RUNNING run's owner lives: by its process on this host, by its heartbeat
    elsewhere; None when neither can tell (another host, a run from before heartbeats)."""
    local = process_alive(tags)
    if local is not None or "heartbeat" not in tags:
        return local
    try:
        beat = float(tags["heartbeat"])
    except ValueError:
        return None
    return (time.time() if now is None else now) - beat < HEARTBEAT_STALE_S


class Heartbeat:
    """Refreshes a run's `heartbeat` tag from a daemon thread while the `with` block runs."""

    def __init__(self, tracking_uri: str, run_id: str, every_s: float = HEARTBEAT_EVERY_S):
        import threading

        self.tracking_uri, self.run_id, self.every_s = tracking_uri, run_id, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)

    def _beat(self) -> None:
        c = client(self.tracking_uri)  # its own client: the job's thread logs through another
        while True:
            try:
                retry(lambda: c.set_tag(self.run_id, "heartbeat", f"{time.time():.0f}"))
            except Exception:  # noqa: BLE001 - a missed beat must never fail the job
                pass
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class MlflowRunLog:
    """The `log` object handed to methods: metrics and figures go to one MLflow run."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.client = client(tracking_uri)
        self.run_id = run_id

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in values.items()]
        retry(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def params(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in values.items()]
        for start in range(0, len(items), 100):
            retry(lambda: self.client.log_batch(self.run_id, params=items[start:start + 100]))

    def tags(self, values: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        retry(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in values.items()]))

    def figure(self, name: str, figure: Any) -> None:
        import matplotlib.pyplot as plt

        retry(lambda: self.client.log_figure(self.run_id, figure, f"figures/{name}"))
        plt.close(figure)

    def text(self, name: str, content: str) -> None:
        retry(lambda: self.client.log_text(self.run_id, content, name))

    def artifact(self, path: Path, folder: str | None = None) -> None:
        retry(lambda: self.client.log_artifact(self.run_id, str(path), folder))

    def finish(self, status: str) -> None:
        retry(lambda: self.client.set_terminated(self.run_id, status))


def latest_protocol(tracking_uri: str) -> str:
    """Name of the experiment whose newest FINISHED job run is the most recent."""
    c = client(tracking_uri)
    experiments = retry(lambda: c.search_experiments())
    best, best_time = None, -1
    for exp in experiments:
        runs = retry(lambda: c.search_runs([exp.experiment_id], "tags.job_hash != '' and attributes.status = 'FINISHED'",
                                           max_results=1, order_by=["attributes.end_time DESC"]))
        if runs and (runs[0].info.end_time or 0) > best_time:
            best, best_time = exp.name, runs[0].info.end_time or 0
    if best is None:
        from .errors import BenchmarkError

        raise BenchmarkError(f"no FINISHED runs in {tracking_uri}; run `benchmark run` first")
    return best
