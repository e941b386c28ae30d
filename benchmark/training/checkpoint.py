"""A job's trained method as a run artifact, and back: `benchmark evaluate --run` tests it on a
new dataset without retraining.

The runner writes `model/state_dict.pt` (the method's `state_dict()`, tensors only) and
`method.json` (what rebuilds it: method name, resolved hyperparameters, backbone and encoder specs
and the encoder's weights digest, the recipe's input size and precision, the job hash). An MLflow
store keeps the two files once, inside the job's LoggedModel (benchmark.deploy.logged_model);
the JSON-lines store, and MLflow stores written before LoggedModels, keep them under the run's
`model/`. Loading uses `torch.load(weights_only=True)`: a checkpoint is data, never code.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..models.backbones import BackboneSpec
from ..models.encoders import EncoderSpec
from ..core.errors import BenchmarkError
from ..store import schema

FOLDER = schema.RUN_CHECKPOINT
STATE = "state_dict.pt"
SPEC = "method.json"


def write(folder: Path, method, job) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(method.state_dict(), folder / STATE)
    spec = {"method": job.method, "hparams": job.hparams, "backbone": dataclasses.asdict(job.backbone),
            "encoder": None if job.encoder is None else dataclasses.asdict(job.encoder),
            "encoder_digest": job.encoder_digest, "input_size": job.recipe.input_size,
            "precision": job.recipe.precision, "job_hash": job.hash}
    (folder / SPEC).write_text(json.dumps(spec, indent=1, default=str))


def read_spec(folder: Path) -> dict:
    try:
        return json.loads((folder / SPEC).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchmarkError(f"{folder}: not a checkpoint this harness wrote ({exc})") from None


def load(folder: Path, device: torch.device, encoder: EncoderSpec | None = None, cache_features: bool = True):
    """(method ready to predict on `device`, its spec) from a folder `write` made; `encoder`
    replaces the spec's (a bundled weights file). `cache_features=False` for images that are not
    a dataset split (a served model's requests): nothing written to the feature cache."""
    from ..models.encoders import build_encoder
    from .features import FeatureCache
    from .method import Components
    from .plugins import build_method

    spec = read_spec(folder)
    try:
        state = torch.load(folder / STATE, map_location=device, weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise BenchmarkError(f"{folder / STATE}: not a state dict this harness wrote ({exc})") from None
    if spec["encoder"] and encoder is None:
        encoder = EncoderSpec(**spec["encoder"])
    frozen = build_encoder(encoder) if encoder is not None else None
    method = build_method(spec["method"], spec["hparams"],
                          Components(BackboneSpec(**spec["backbone"]), frozen, FeatureCache(enabled=cache_features)))
    method.place(device)
    method.load_state_dict(state)
    return method, spec
