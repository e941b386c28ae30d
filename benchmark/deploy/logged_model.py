"""A FINISHED job's trained method as an MLflow model (a LoggedModel of the job's run).

The model folder is MLflow's pyfunc layout around the harness's checkpoint, which is stored there
once (`artifacts/checkpoint/`: state_dict.pt and method.json, what `benchmark evaluate` reads):

    MLmodel                  flavour, signature (a column `image` of encoded bytes in; seven
                             probabilities named by the canonical classes out), the input example
    model_code.py            the code MLflow runs to load it (models from code, nothing unpickled):
                             PyfuncModel, imported from the installed package
    requirements.txt         fer-benchmark pinned to the version that wrote it, torch, torchvision
    artifacts/checkpoint/    the trained method; a frozen encoder is referenced by id and digest
                             and resolved from the local caches when the model loads, unless
                             `benchmark export --bundle-encoder` copied its weights in

The model's params and tags say what trained it: method (with its recipes), source, seed,
backbone, encoder, job hash, protocol and the sweep point.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import warnings
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from .. import __version__
from ..core.errors import BenchmarkError
from ..core.labels import CLASSES
from ..store import ResultStore, RunRecord, schema
from ..store.base import method_label
from ..training import checkpoint
from .classifier import ENCODER_FILE, ImageClassifier

PACKAGE = "fer-benchmark"
INPUT_COLUMN = "image"
CHECKPOINT = schema.MODEL_CHECKPOINT.rpartition("/")[2]  # the artifact key: the files lie under artifacts/checkpoint/


class PyfuncModel(mlflow.pyfunc.PythonModel):
    """What `mlflow.pyfunc.load_model` and `mlflow models serve` run."""

    def load_context(self, context):
        self.classifier = ImageClassifier.load(Path(context.artifacts[CHECKPOINT]))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        images = [bytes(b) for b in model_input[INPUT_COLUMN]]
        return pd.DataFrame(self.classifier.probabilities(images), columns=list(CLASSES))


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("binary", INPUT_COLUMN)]),
                          outputs=Schema([ColSpec("double", name) for name in CLASSES]))


def example_image(size: int) -> bytes:
    """The input example: a mid-grey PNG of the model's input size. Not a dataset's image: the
    model may be shared where the licensed datasets may not."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(out, format="PNG")
    return out.getvalue()


def requirements() -> list[str]:
    import torch
    import torchvision

    return [f"{PACKAGE}=={__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"torchvision=={torchvision.__version__.split('+')[0]}"]


def save(folder: Path, checkpoint_folder: Path, *, model_id: str | None = None, run_id: str | None = None,
         artifact_location: str | None = None, bundle_encoder: bool = False) -> Path:
    """Write the MLflow model folder around a checkpoint folder (its files are copied in once)."""
    from mlflow.models import Model

    spec = checkpoint.read_spec(checkpoint_folder)
    with tempfile.TemporaryDirectory() as staging:
        # MLflow names the artifact by its folder's name; a bundled encoder joins a copy, never the source.
        if checkpoint_folder.name != CHECKPOINT or bundle_encoder:
            staged = Path(staging) / CHECKPOINT
            shutil.copytree(checkpoint_folder, staged)
            checkpoint_folder = staged
        if bundle_encoder:
            from .classifier import encoder_spec
            from ..models.encoders import encoder_weights_file

            encoder = encoder_spec(checkpoint_folder, spec)  # checks the digest
            path = encoder_weights_file(encoder) if encoder is not None else None
            if path is None:
                raise BenchmarkError(f"--bundle-encoder: the model ({spec['method']}) has no frozen encoder weights "
                                     "to bundle")
            shutil.copyfile(path, checkpoint_folder / ENCODER_FILE)
        with warnings.catch_warnings():  # MLflow's own use of a pandas API pandas 4 deprecates, not ours
            warnings.filterwarnings("ignore", message="Operation with range is deprecated")
            mlflow.pyfunc.save_model(
                path=str(folder), python_model=str(Path(__file__).with_name("model_code.py")),
                artifacts={CHECKPOINT: str(checkpoint_folder)}, signature=signature(),
                input_example=pd.DataFrame({INPUT_COLUMN: [example_image(int(spec["input_size"]))]}),
                pip_requirements=requirements(),
                mlflow_model=Model(artifact_path=artifact_location, run_id=run_id, model_id=model_id,
                                   model_uuid=model_id))
    return folder


def identity(run: RunRecord) -> tuple[str, dict[str, str], dict[str, str]]:
    """(name, params, tags) of a job run's model: what trained it, from the run's own record."""
    label = method_label(run)
    params = {"method": label, "source": run.tags.get(schema.SOURCE, ""), "seed": run.tags.get(schema.SEED, ""),
              "backbone": run.params.get(schema.BACKBONE, ""), "encoder": run.params.get("encoder", "none"),
              "encoder.digest": run.params.get("encoder.digest", "none"),
              "job_hash": run.tags.get(schema.JOB_HASH, ""), "protocol": run.tags.get(schema.PROTOCOL, ""),
              **{k: v for k, v in run.tags.items() if k.startswith(schema.SWEEP_PREFIX)}}
    tags = {schema.METHOD: label, schema.SOURCE: params["source"], schema.SEED: params["seed"],
            schema.JOB_HASH: params["job_hash"], schema.PROTOCOL: params["protocol"]}
    return model_name(label, params["source"], f"seed{params['seed']}"), params, tags


def model_name(*parts: str) -> str:
    """A name MLflow takes for a model: no / : . % or quotes (synth5/studio -> synth5-studio)."""
    return "-".join(parts).translate({ord(c): "-" for c in "/:.%\"'"})


def log(store: ResultStore, run_id: str, checkpoint_folder: Path, step: int) -> str:
    """A LoggedModel of job run `run_id` around its checkpoint, the run's metrics of `step` (the
    model's epoch) linked to it and to each target's dataset; its id."""
    name, params, tags = identity(store.run(run_id))
    model_id = store.log_model(run_id, name, params, tags, lambda folder, model_id, location: save(
        folder, checkpoint_folder, model_id=model_id, run_id=run_id, artifact_location=location), step)
    store.link_model_metrics(run_id, model_id, step)
    return model_id
