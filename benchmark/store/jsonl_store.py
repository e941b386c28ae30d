"""The JSON-lines backend of the result store: a folder, no server, no database.

    jsonl:results/runs      (the folder; created on first use)

`<folder>/runs.jsonl` holds one event per line (an experiment created, a run created, tags,
params, metrics with their step, a run ended or deleted), appended under a lock file so that
processes on one machine (or hosts sharing a file system with working locks) write safely; a
run's state is its events folded in order. Artifacts go to `<folder>/artifacts/<run id>/`.
It serves tests and small studies; use MLflow to browse runs in a UI.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..core.errors import BenchmarkError
from . import schema
from .base import ResultStore, RunWriter, RunRecord

PREFIX = "jsonl:"


class JsonlRunLog(RunWriter):
    def __init__(self, store: "JsonlStore", run_id: str):
        self.store, self.run_id = store, run_id

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        self.store._append({"op": "metrics", "run": self.run_id, "step": step or 0, "time": _now(),
                            "values": {k: float(v) for k, v in values.items()}})

    def params(self, values: dict[str, Any]) -> None:
        self.store._append({"op": "params", "run": self.run_id, "values": {k: str(v) for k, v in values.items()}})

    def tags(self, values: dict[str, str]) -> None:
        self.store._append({"op": "tags", "run": self.run_id, "values": {k: str(v) for k, v in values.items()}})

    def figure(self, name: str, figure: Any) -> None:
        import matplotlib.pyplot as plt

        path = self.store.artifact_root(self.run_id) / "figures" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
        plt.close(figure)

    def text(self, name: str, content: str) -> None:
        path = self.store.artifact_root(self.run_id) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)

    def artifacts(self, folder: Path, under: str) -> None:
        shutil.copytree(folder, self.store.artifact_root(self.run_id) / under, dirs_exist_ok=True)

    def inputs(self, datasets) -> None:
        self.store._append({"op": "inputs", "run": self.run_id, "datasets": [
            {"name": d.name, "digest": d.digest, "source": d.source, "context": d.context} for d in datasets]})

    def finish(self, status: str) -> None:
        self.store._append({"op": "end", "run": self.run_id, "status": status, "time": _now()})


def _now() -> int:
    return int(time.time() * 1000)


class JsonlStore(ResultStore):
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.uri = f"{PREFIX}{self.folder}"

    def local_folder(self) -> Path:
        return self.folder

    @property
    def events_path(self) -> Path:
        return self.folder / "runs.jsonl"

    def artifact_root(self, run_id: str) -> Path:
        return self.folder / "artifacts" / run_id

    def _lock(self) -> FileLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        return FileLock(f"{self.events_path}.lock")

    def _append(self, event: dict, lock: bool = True) -> None:
        line = json.dumps(event, separators=(",", ":")) + "\n"
        if not lock:
            self._write(line)
            return
        with self._lock():
            self._write(line)

    def _write(self, line: str) -> None:
        with open(self.events_path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def _events(self) -> list[dict]:
        if not self.events_path.exists():
            return []
        events = []
        with open(self.events_path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise BenchmarkError(f"{self.events_path}:{number}: not a JSON event ({exc.msg})") from None
        return events

    def _state(self) -> tuple[dict[str, str], dict[str, dict]]:
        """(experiment name -> id, run id -> run) folded from the events."""
        experiments: dict[str, str] = {}
        runs: dict[str, dict] = {}
        for number, event in enumerate(self._events(), 1):
            op = event.get("op")
            if op == "experiment":
                experiments.setdefault(event["name"], event["id"])
            elif op == "create":
                runs[event["run"]] = {"experiment": event["experiment"], "name": event["name"], "status": "RUNNING",
                                      "start": event["time"], "end": None, "tags": dict(event["tags"]),
                                      "params": {}, "metrics": {}, "inputs": []}
            elif op in ("tags", "params", "metrics", "end", "delete", "inputs"):
                run = runs.get(event["run"])
                if run is None:
                    raise BenchmarkError(f"{self.events_path}:{number}: event for unknown run {event['run']!r}")
                if op == "metrics":
                    run["metrics"].update(event["values"])
                elif op == "end":
                    run["status"], run["end"] = event["status"], event["time"]
                elif op == "delete":
                    run["deleted"] = True
                elif op == "inputs":
                    run["inputs"] += [(d["name"], d["context"]) for d in event["datasets"]]
                else:
                    run[op].update(event["values"])
            else:
                raise BenchmarkError(f"{self.events_path}:{number}: unknown event {op!r}")
        return experiments, runs

    def experiment(self, name: str, create: bool = True) -> str | None:
        found = self._state()[0].get(name)
        if found is not None or not create:
            return found
        with self._lock():  # created once, however many processes ask at the same moment
            found = self._state()[0].get(name)
            if found is None:
                found = uuid.uuid4().hex[:12]
                self._append({"op": "experiment", "id": found, "name": name}, lock=False)
        return found

    def experiment_names(self) -> list[str]:
        return list(self._state()[0])

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str]) -> RunWriter:
        run_id = uuid.uuid4().hex
        self._append({"op": "create", "run": run_id, "experiment": experiment_id, "name": name, "time": _now(),
                      "tags": {k: str(v) for k, v in tags.items()}})
        return JsonlRunLog(self, run_id)

    def run_log(self, run_id: str) -> RunWriter:
        return JsonlRunLog(self, run_id)

    def runs(self, experiment_id: str, *, job_hash: str | None = None, kind: str | None = None,
             jobs_only: bool = False) -> list[RunRecord]:
        out = []
        for run_id, run in self._state()[1].items():
            tags = run["tags"]
            if run["experiment"] != experiment_id or run.get("deleted"):
                continue
            if (job_hash is not None and tags.get(schema.JOB_HASH) != job_hash) or \
                    (kind is not None and tags.get(schema.KIND) != kind) or \
                    (jobs_only and not tags.get(schema.JOB_HASH)):
                continue
            out.append(RunRecord(run_id, run["status"], run["start"], run["end"], tags, run["params"],
                                 run["metrics"], run["inputs"]))
        return out

    def delete_run(self, run_id: str) -> None:
        self._append({"op": "delete", "run": run_id})

    def histories(self, run_ids, wanted, keys):  # one pass over the events for every run
        wanted_runs = set(run_ids)
        out: dict[str, dict[str, list[tuple[int, float]]]] = {run_id: {} for run_id in run_ids}
        for event in self._events():
            if event.get("op") == "metrics" and event["run"] in wanted_runs:
                for key, value in event["values"].items():
                    if wanted(key):
                        out[event["run"]].setdefault(key, []).append((event["step"], value))
        return out

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(e["step"], e["values"][key]) for e in self._events()
                if e.get("op") == "metrics" and e["run"] == run_id and key in e["values"]]

    def run(self, run_id: str) -> RunRecord:
        run = self._state()[1].get(run_id)
        if run is None or run.get("deleted"):
            raise BenchmarkError(f"no run {run_id!r} in {self.uri}")
        return RunRecord(run_id, run["status"], run["start"], run["end"], run["tags"], run["params"], run["metrics"],
                         run["inputs"])

    def download(self, run_id: str, path: str, destination: Path) -> Path:
        source = self.artifact_root(run_id) / path
        if not source.exists():
            raise BenchmarkError(f"run {run_id} in {self.uri} has no artifact {path!r}")
        target = destination / Path(path).name
        destination.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
        return target

    def artifact_paths(self, run_id: str, folder: str) -> list[str]:
        root = self.artifact_root(run_id)
        return sorted(p.relative_to(root).as_posix() for p in (root / folder).rglob("*") if p.is_file())
