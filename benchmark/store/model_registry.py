"""Trained models in the store: MLflow's LoggedModels and registry, as the result store offers
them (the JSON-lines store has neither and says so)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


from ..core.errors import BenchmarkError
from . import schema
from .records import DatasetRef, ModelRecord


class ModelRegistry:
    """A store's trained models (the primitives they need are a backend's)."""

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

    def log_model_metrics(self, run_id: str, model_id: str, values: dict[str, float], step: int,
                          datasets: dict[str, DatasetRef] | None = None) -> None:
        """Metrics of run `run_id` about model `model_id` (a test-time adaptation's results), each
        linked to the model, and a key starting with a prefix in `datasets` to that dataset; one write."""
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
