"""A job's trained method as a run artifact, and back: `benchmark evaluate --run` tests it on a
new dataset without retraining.

The runner writes `model/state_dict.pt` (the method's `state_dict()`, tensors only) and
`model/method.json` (what rebuilds it: method name, resolved hyperparameters, backbone and
encoder specs, the recipe's input size and precision, the job hash). Loading uses
`torch.load(weights_only=True)`: a checkpoint is data, never code.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..models.backbones import BackboneSpec
from ..models.encoders import EncoderSpec
from ..core.errors import BenchmarkError

FOLDER = "model"
STATE = "state_dict.pt"
SPEC = "method.json"


def write(folder: Path, method, job) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(method.state_dict(), folder / STATE)
    spec = {"method": job.method, "hparams": job.hparams, "backbone": dataclasses.asdict(job.backbone),
            "encoder": None if job.encoder is None else dataclasses.asdict(job.encoder),
            "input_size": job.recipe.input_size, "precision": job.recipe.precision, "job_hash": job.hash}
    (folder / SPEC).write_text(json.dumps(spec, indent=1, default=str))


def load(folder: Path, device: torch.device):
    """(method ready to predict on `device`, its spec) from a folder `write` made."""
    from ..models.encoders import build_encoder
    from .method import Components
    from .plugins import build_method

    try:
        spec = json.loads((folder / SPEC).read_text())
        state = torch.load(folder / STATE, map_location=device, weights_only=True)
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchmarkError(f"{folder}: not a checkpoint this harness wrote ({exc})") from None
    encoder = build_encoder(EncoderSpec(**spec["encoder"])) if spec["encoder"] else None
    method = build_method(spec["method"], spec["hparams"], Components(BackboneSpec(**spec["backbone"]), encoder))
    method.place(device)
    method.load_state_dict(state)
    return method, spec
