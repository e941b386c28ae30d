"""The result store: the one owner of the run record.

`ResultStore` is what the rest of the harness talks to. A backend implements a handful of
primitives (experiments, creating / listing / deleting runs, a `RunLog` per run); everything the
grid needs on top of them is written here once, for every backend: job states by hash, the claim
that makes each job train once however many processes ask, closing abandoned runs, and the
tidy results frame that tables are built from.
"""

from __future__ import annotations

import abc
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..core.errors import BenchmarkError
from . import schema
from .liveness import Heartbeat, process_alive, process_tags, run_alive

# How a claimant waits for others who stamped a run at the same moment (benchmark.store.claim).
CLAIM_SETTLE_S = 0.5
ABANDONED = "abandoned: its process ended without finishing"
# `sweep`: the job's swept values as "name=value, ..." ("" outside a sweep).
# collapsed: the run's model predicts (almost) one class on its source's test set (schema.COLLAPSED)
RESULT_COLUMNS = ["method", "backbone", "source", "seed", "target", "metric", "value", "env", "sweep", "collapsed"]
HISTORY_COLUMNS = ["job_hash", "method", "backbone", "source", "seed", "target", "metric", "epoch", "value", "env",
                   "sweep", "collapsed"]


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


class RunLog(abc.ABC):
    """Writes to one run. Methods see only `metrics` and `figure` (benchmark.training.method.RunLog)."""

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


@dataclass
class JobState:
    job: Any  # benchmark.jobs.plan.Job
    state: str  # "new", "FINISHED", "FAILED", "RUNNING" (alive, or unknown), "abandoned" (known dead)
    run_ids: list[str]


class ResultStore(abc.ABC):
    """A place runs are written to and read from; picklable, so workers on other processes and
    hosts get it with their job and write straight to the same place."""

    uri: str

    # -- primitives a backend implements ------------------------------------------------------
    @abc.abstractmethod
    def experiment(self, name: str, create: bool = True) -> str | None:
        """The id of the experiment `name` (created when absent and `create`; else None)."""

    @abc.abstractmethod
    def experiment_names(self) -> list[str]: ...

    @abc.abstractmethod
    def create_run(self, experiment_id: str, name: str, tags: dict[str, str]) -> RunLog: ...

    @abc.abstractmethod
    def run_log(self, run_id: str) -> RunLog:
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

    # -- trained models: MLflow's LoggedModels and registry (the JSON-lines store has neither) --
    has_models = False

    def no_models(self, what: str) -> BenchmarkError:
        return BenchmarkError(f"{self.uri}: a JSON-lines store has no MLflow models or model registry, so it cannot "
                              f"{what}; run the grid with an MLflow tracking URI (the default, "
                              "sqlite:///results/mlflow.db) for that. Its runs' trained methods stay under model/ and "
                              "`benchmark evaluate` and `benchmark predict --model <run id>` read them")

    def log_model(self, run_id: str, name: str, params: dict[str, str], tags: dict[str, str],
                  build: Callable[[Path, str, str], None], step: int) -> str:
        """A LoggedModel of run `run_id`: `build(folder, model_id, artifact_location)` writes its
        files, which are uploaded once; the model is READY, or FAILED if `build` raised. Its id."""
        raise self.no_models("log a trained model")

    def link_model_metrics(self, run_id: str, model_id: str, step: int) -> int:
        """The run's metrics of `step` logged again against the model (a test target's against that
        target's dataset, as read from the run's inputs); how many."""
        raise self.no_models("link metrics to a model")

    def model_of_run(self, run_id: str) -> ModelRecord | None:
        """The READY LoggedModel run `run_id` made, if any."""
        return None

    def checkpoint(self, run_id: str, destination: Path) -> Path:
        """A local copy of a FINISHED job run's trained-method folder: its LoggedModel's, or for
        runs made before models (and in the JSON-lines store) the run's own `model/`."""
        model = self.model_of_run(run_id)
        if model is not None:
            return self.download_model(model.model_id, schema.MODEL_CHECKPOINT, destination)
        return self.download(run_id, schema.RUN_CHECKPOINT, destination)

    def models(self, experiment_id: str, filter_string: str = "", order_by: list[dict] | None = None) -> list[ModelRecord]:
        raise self.no_models("list models")

    def resolve_model(self, reference: str) -> ModelRecord:
        """A model by reference: models:/<name>@<alias>, models:/<name>/<version>, models:/<model id>,
        a model id (m-...)."""
        raise self.no_models(f"find the model {reference!r}")

    def download_model(self, model_id: str, path: str, destination: Path) -> Path:
        raise self.no_models("read a model's files")

    def register(self, name: str, model: ModelRecord, alias: str, description: str) -> tuple[str, bool]:
        """Version of registered model `name` holding `model`, with `alias` set to it; made only when
        no version holds it yet. (version, whether it was made now)."""
        raise self.no_models("register a model")

    # -- the grid's operations, the same for every backend ------------------------------------
    def job_states(self, jobs: list, experiment_id: str) -> list[JobState]:
        """What the store already says about each job, by its hash."""
        wanted = {j.hash for j in jobs}
        by_hash: dict[str, list[RunRecord]] = {}
        for run in self.runs(experiment_id, jobs_only=True):
            if run.tags.get(schema.JOB_HASH) in wanted:
                by_hash.setdefault(run.tags[schema.JOB_HASH], []).append(run)
        states = []
        for job in jobs:
            runs = by_hash.get(job.hash, [])
            statuses = {r.status for r in runs}
            if "FINISHED" in statuses:
                state = "FINISHED"
            elif "RUNNING" in statuses:
                alive = [run_alive(r.tags) for r in runs if r.status == "RUNNING"]
                state = "abandoned" if all(a is False for a in alive) else "RUNNING"
            elif statuses:
                state = "FAILED"
            else:
                state = "new"
            states.append(JobState(job, state, [r.run_id for r in runs]))
        return states

    def mark_abandoned(self, state: JobState, experiment_id: str) -> None:
        """Close a job's RUNNING runs whose owner is gone as FAILED, saying so."""
        for run in self.runs(experiment_id, job_hash=state.job.hash):
            if run.run_id in state.run_ids and run.status == "RUNNING":
                self._close(run.run_id, "FAILED", ABANDONED)

    def close_lost(self, experiment_id: str, job_hash: str, parent_run_id: str, why: str) -> None:
        """Close as FAILED the job's RUNNING runs under grid `parent_run_id`, whose process its
        executor knows is gone (Ray reported the worker or node dead), so a new try may claim it."""
        for run in self.runs(experiment_id, job_hash=job_hash):
            if run.status == "RUNNING" and run.tags.get(schema.PARENT) == parent_run_id:
                self._close(run.run_id, "FAILED", why)

    def close_abandoned_grids(self, experiment_id: str) -> None:
        """Parent runs of earlier `benchmark run`s on this host whose process died without closing
        them (SIGKILL, power loss) are marked KILLED, as an interrupted run marks its own."""
        for run in self.runs(experiment_id, kind="grid"):
            if run.status == "RUNNING" and process_alive(run.tags) is False:
                self._close(run.run_id, "KILLED", ABANDONED)

    def _close(self, run_id: str, status: str, error: str) -> None:
        log = self.run_log(run_id)
        log.tags({schema.ERROR: error})
        log.finish(status)

    def open_grid(self, experiment_id: str, protocol: str, command: str, description: str = "") -> RunLog:
        """The parent run of one `benchmark run`."""
        import getpass

        tags = {schema.PROTOCOL: protocol, schema.KIND: "grid", schema.COMMAND: command[:5000],
                schema.USER: getpass.getuser(), schema.DESCRIPTION: f"{description}\n\n`{command}`".strip(),
                **process_tags()}
        return self.create_run(experiment_id, f"grid-{time.strftime('%Y%m%d-%H%M%S')}", tags)

    def open_job(self, experiment_id: str, parent_run_id: str, job) -> RunLog:
        """A job's run, RUNNING and owned by this process (claim it before training)."""
        tags = {schema.JOB_HASH: job.hash, schema.METHOD: job.method, schema.SOURCE: job.source,
                schema.SEED: str(job.seed), schema.PROTOCOL: job.protocol, schema.PARENT: parent_run_id,
                **({schema.DG_RECIPES: job.recipe.dg_label()} if hasattr(job, "recipe") else {}),
                **{schema.SWEEP_PREFIX + k: str(v) for k, v in getattr(job, "sweep", {}).items()}, **process_tags()}
        return self.create_run(experiment_id, schema.job_run_name(job.method, job.source, job.seed), tags)

    def system_metrics(self, run_id: str, every_s: float) -> contextlib.AbstractContextManager:
        """A context that samples CPU, memory, disk, network (and GPU) use into the run every
        `every_s` seconds while it lasts. Only the MLflow backend records them (MLflow's own
        `system/` metrics); here, and when `every_s` is 0, it records nothing."""
        return contextlib.nullcontext()

    def heartbeat(self, run_id: str, **kwargs) -> Heartbeat:
        """A context that keeps the run's heartbeat fresh (through its own writer)."""
        return Heartbeat(self.run_log(run_id).tags, **kwargs)

    def claim(self, experiment_id: str, job_hash: str, run_id: str, settle_s: float = CLAIM_SETTLE_S) -> str | None:
        """None when run `run_id` holds the job; otherwise who does (a text for the user).

        A store gives no atomic "create if absent", neither a SQLite file nor an MLflow server
        reached over HTTP, so a job is claimed by writing and then reading: the claimant has
        created its RUNNING run, waits `settle_s` for anyone who stamped a run at the same moment
        to finish writing it, then reads every run of that hash. The earliest live RUNNING run
        (by start time, then run id) holds the job; every other claimant sees the same order,
        deletes its own run and skips the job. A FINISHED run means the job is done. Dead
        claimants (process gone on this host, heartbeat stale elsewhere) do not count, so a
        crashed job is taken over. Hosts must agree on the time to within `settle_s`.
        """
        time.sleep(settle_s)
        runs = self.runs(experiment_id, job_hash=job_hash)
        mine = next((r for r in runs if r.run_id == run_id), None)
        others = [r for r in runs if r.run_id != run_id]
        finished = [r for r in others if r.status == "FINISHED"]
        if finished:
            return f"FINISHED already (run {finished[0].run_id})"
        rivals = [r for r in others if r.status == "RUNNING" and run_alive(r.tags) is not False]
        if mine is None or not rivals:
            return None
        first = min([mine, *rivals], key=lambda r: (r.start_time, r.run_id))
        if first is mine:
            return None
        return (f"running in process {first.tags.get(schema.PID, '?')} on host {first.tags.get(schema.HOST, '?')} "
                f"(run {first.run_id})")

    def latest_protocol(self) -> str:
        """Name of the experiment whose newest FINISHED job run is the most recent."""
        from ..core.errors import BenchmarkError

        best, best_time = None, -1
        for name in self.experiment_names():
            ends = [r.end_time or 0 for r in self.runs(self.experiment(name), jobs_only=True)
                    if r.status == "FINISHED"]
            if ends and max(ends) > best_time:
                best, best_time = name, max(ends)
        if best is None:
            raise BenchmarkError(f"no FINISHED runs in {self.uri}; run `benchmark run` first")
        return best

    def logged_protocol(self, protocol: str) -> dict[str, Any] | None:
        """The resolved protocol (its `protocol.json`) the newest grid run of the experiment
        logged; None when there is none (a protocol file not in protocols/ is read back this way)."""
        import json
        import tempfile

        experiment_id = self.experiment(protocol, create=False)
        grids = [] if experiment_id is None else self.runs(experiment_id, kind="grid")
        for grid in sorted(grids, key=lambda r: r.start_time, reverse=True):
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    return json.loads(self.download(grid.run_id, "protocol.json", Path(tmp)).read_text())
                except Exception:  # noqa: BLE001 - best effort: an older grid run may lack the file
                    continue
        return None

    def _counted_runs(self, protocol: str) -> tuple[list[RunRecord], list[str]]:
        """The FINISHED job runs of a protocol, one per job hash (the earliest; others, left by
        concurrent runs of older versions, are ignored with a warning)."""
        experiment = self.experiment(protocol, create=False)
        runs = [] if experiment is None else [r for r in self.runs(experiment, jobs_only=True)
                                              if r.status == "FINISHED"]
        runs.sort(key=lambda r: (r.start_time, r.run_id))
        seen: set[str] = set()
        counted, extra = [], []
        for run in runs:
            (extra if run.tags[schema.JOB_HASH] in seen else counted).append(run)
            seen.add(run.tags[schema.JOB_HASH])
        warnings = []
        if extra:
            hashes = sorted({r.tags[schema.JOB_HASH] for r in extra})
            warnings.append(f"{len(extra)} extra FINISHED run(s) of {len(hashes)} job(s) ignored "
                            f"(one run counts per job hash; hashes {', '.join(hashes)})")
        counted, other_data = _latest_per_data(counted)
        return counted, warnings + other_data

    @staticmethod
    def _job_columns(run: RunRecord, known: dict[str, str]) -> tuple[list, dict[str, str]]:
        """[method, backbone, source, seed] of a job run, and safe name -> dataset name for its
        metric keys (from `known` and the run's own data.<dataset>:<split> params)."""
        from ..core.environment import SIGNATURE_KEYS, signature

        names = {**{schema.safe_name(d): d for d in schema.datasets_read(run.params)}, **known}
        env = signature({k: run.params.get(k) for k in SIGNATURE_KEYS})
        swept = {k[len(schema.SWEEP_PREFIX):]: v for k, v in run.tags.items() if k.startswith(schema.SWEEP_PREFIX)}
        return [method_label(run), run.params.get(schema.BACKBONE, ""), run.tags[schema.SOURCE],
                int(run.tags[schema.SEED])], {"names": names, "env": env, "sweep": schema.sweep_label(swept),
                                               "collapsed": bool(run.tags.get(schema.COLLAPSED))}

    def results(self, protocol: str, datasets: list[str] | None = None) -> pd.DataFrame:
        """The tidy frame tables are built from: one row per (FINISHED job run, target, metric),
        the final values, with columns RESULT_COLUMNS; `env` is the run's environment signature.

        One FINISHED run counts per job hash; what the reader should know (ignored duplicates)
        is in `frame.attrs["warnings"]`. Metric keys name targets by their safe names; the
        dataset names come back from `datasets` and from each run's `data.*` params.
        """
        counted, warnings = self._counted_runs(protocol)
        known = {schema.safe_name(d): d for d in (datasets or [])}
        rows = []
        for run in counted:
            job, extra = self._job_columns(run, known)
            for key, value in run.metrics.items():
                parsed = schema.parse_test_metric(key)
                if parsed is not None:
                    rows.append([*job, extra["names"].get(parsed[0], parsed[0]), parsed[1], float(value), extra["env"],
                                 extra["sweep"], extra["collapsed"]])
        frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
        frame["backbone"] = backbone_labels(frame["backbone"])
        # A fixed row order makes every sum (and so every rounded cell) the same from run to run.
        frame = frame.sort_values(RESULT_COLUMNS[:6], kind="stable").reset_index(drop=True)
        frame.attrs["warnings"] = warnings
        return frame

    def histories(self, run_ids: list[str], wanted: Callable[[str], bool],
                  keys: dict[str, list[str]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """run id -> metric key -> its (step, value) history, for the `wanted` keys among `keys`
        (each run's metric keys). Backends may do this in one pass."""
        return {run_id: {key: self.metric_history(run_id, key) for key in keys[run_id] if wanted(key)}
                for run_id in run_ids}

    def history(self, protocol: str, metrics: list[str], datasets: list[str] | None = None) -> pd.DataFrame:
        """Per-epoch values of the job runs counted by `results`: columns HISTORY_COLUMNS, one row
        per (run, target, metric, epoch) for `metrics` on every target and on the source's
        validation split (target "source_val"), whatever each run evaluated."""
        counted, warnings = self._counted_runs(protocol)
        known = {schema.safe_name(d): d for d in (datasets or [])}

        def wanted(key: str) -> bool:
            parsed = schema.parse_test_metric(key)
            if parsed is not None:
                return parsed[1] in metrics
            return key.startswith(schema.SOURCE_VAL + "/") and key[len(schema.SOURCE_VAL) + 1:] in metrics

        histories = self.histories([r.run_id for r in counted], wanted, {r.run_id: list(r.metrics) for r in counted})
        rows = []
        for run in counted:
            job, extra = self._job_columns(run, known)
            for key, points in histories[run.run_id].items():
                parsed = schema.parse_test_metric(key)
                target, metric = ((extra["names"].get(parsed[0], parsed[0]), parsed[1]) if parsed is not None
                                  else (schema.SOURCE_VAL, key[len(schema.SOURCE_VAL) + 1:]))
                for step, value in points:
                    rows.append([run.tags[schema.JOB_HASH], *job, target, metric, int(step), float(value), extra["env"],
                                 extra["sweep"], extra["collapsed"]])
        frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
        frame["backbone"] = backbone_labels(frame["backbone"])
        frame = (frame
                 .sort_values(["method", "backbone", "source", "seed", "target", "metric", "epoch"], kind="stable")
                 .drop_duplicates(["job_hash", "target", "metric", "epoch"], keep="last").reset_index(drop=True))
        frame.attrs["warnings"] = warnings
        return frame


def method_label(run: RunRecord) -> str:
    """The method as tables name it: with the domain-generalization recipes its job wore
    ("erm+swad", "cafe+sam"), so a method with and without one are two rows, compared as two methods."""
    label = run.tags.get(schema.DG_RECIPES)
    if label is None:  # logged before the tag
        label = schema.legacy_dg_label({k.removeprefix("recipe."): v for k, v in run.params.items()
                                        if k.startswith("recipe.")})
    return f"{run.tags[schema.METHOD]}+{label}" if label else run.tags[schema.METHOD]


def backbone_labels(ids: pd.Series) -> pd.Series:
    """Each backbone id NAME:WEIGHTS as tables name it: its NAME ("resnet18", "timm:convnext_atto"),
    or the whole id where the frame holds one name with two weights (the pretraining axis:
    "mobilenet_v2:imagenet" beside "mobilenet_v2:none")."""
    names = ids.map(lambda i: i.rpartition(":")[0] or i)
    weights_per_name = ids.groupby(names).nunique()
    return ids.where(names.map(weights_per_name) > 1, names)


def _same_job_key(run: RunRecord) -> tuple:
    """What makes two runs the same job but for the data they read: method, backbone, source,
    seed, sweep point and every hyperparameter and recipe value."""
    settings = tuple(sorted((k, v) for k, v in run.params.items()
                            if k.startswith(("hp.", "recipe.")) or k == schema.BACKBONE))
    sweep = tuple(sorted((k, v) for k, v in run.tags.items() if k.startswith(schema.SWEEP_PREFIX)))
    return run.tags[schema.METHOD], run.tags[schema.SOURCE], run.tags[schema.SEED], sweep, settings


def _latest_per_data(runs: list[RunRecord]) -> tuple[list[RunRecord], list[str]]:
    """`runs` less the earlier runs of a job made again on other data (a dataset split whose
    fingerprint differs: synth5 drawn by another generator version or CPU, a dataset copy that
    changed), with a warning naming them. Such runs have different job hashes, so without this
    a table would count the same seed twice. `runs` is in start order; the latest counts."""
    by_job: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        by_job.setdefault(_same_job_key(run), []).append(run)
    dropped: set[str] = set()
    described = []
    for group in by_job.values():
        data = [{k: v for k, v in r.params.items() if k.startswith(schema.DATA_PREFIX)} for r in group]
        differing = sorted({k for a in data for b in data for k in a.keys() & b.keys() if a[k] != b[k]})
        if not differing:
            continue
        dropped.update(r.run_id for r in group[:-1])
        latest = group[-1]
        split = differing[0][len(schema.DATA_PREFIX):]
        digests = " vs ".join(dict.fromkeys(d[differing[0]] for d in data if differing[0] in d))
        described.append(f"{latest.tags[schema.METHOD]} on {latest.tags[schema.SOURCE]} (seed "
                         f"{latest.tags[schema.SEED]}): {split} {digests}")
    if not dropped:
        return runs, []
    more = f" and {len(described) - 6} more" if len(described) > 6 else ""
    return [r for r in runs if r.run_id not in dropped], [
        f"{len(described)} job(s) were run on different data ({'; '.join(described[:6])}{more}); "
        f"only the latest run of each counts, {len(dropped)} earlier run(s) ignored. Compare the data "
        f"digests (MLflow's dataset inputs, `benchmark datasets check`) before trusting the table"]
