"""Predicting image files with a trained model, wherever it is stored: a registered or logged
MLflow model, or a job run (its model, or the run's own checkpoint in stores without models)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pandas as pd

from ..core.errors import BenchmarkError
from ..core.labels import CLASSES
from ..store import ResultStore, schema
from .classifier import ImageClassifier, NotAnImage, decode

RUN_ID = re.compile(r"[0-9a-f]{32}")
BATCH = 64


def checkpoint_folder(store: ResultStore, reference: str, destination: Path) -> tuple[Path, str]:
    """A local copy of the checkpoint `reference` names, and a line saying what it is."""
    if RUN_ID.fullmatch(reference):
        return store.checkpoint(reference, destination), f"run {reference}"
    if not (reference.startswith("models:/") or reference.startswith("m-")):
        raise BenchmarkError(f"--model {reference!r}: expected models:/<name>@<alias>, models:/<name>/<version>, "
                             "models:/<model id>, a model id (m-...) or a job's run id (32 hex digits)")
    model = store.resolve_model(reference)
    what = f"model {model.model_id} ({model.name}{f', version {model.version}' if model.version else ''})"
    return store.download_model(model.model_id, schema.MODEL_CHECKPOINT, destination), what


def image_files(paths: list[Path]) -> list[Path]:
    """The files named, and every file below the folders named (sorted); a missing path is an error."""
    out = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        elif path.is_file():
            out.append(path)
        else:
            raise BenchmarkError(f"{path}: no such file or folder")
    return out


def predict_files(classifier: ImageClassifier, files: list[Path],
                  progress: Callable[[int], None] = lambda n: None) -> tuple[pd.DataFrame, list[tuple[Path, str]]]:
    """(one row per image: path, predicted class, the seven probabilities; files skipped and why).
    A file that does not decode is skipped, the rest still predicted."""
    import numpy as np

    rows, probs, skipped = [], [], []
    for start in range(0, len(files), BATCH):
        pixels = []
        for path in files[start:start + BATCH]:
            try:
                pixels.append(decode(path.read_bytes(), classifier.input_size, str(path)))
                rows.append(str(path))
            except (NotAnImage, OSError) as exc:
                skipped.append((path, str(exc).removeprefix(f"{path}: ")))
        if pixels:
            probs.append(classifier.probabilities_of_pixels(np.stack(pixels)))
        progress(len(files[start:start + BATCH]))
    p = np.concatenate(probs) if probs else np.zeros((0, len(CLASSES)))
    frame = pd.DataFrame({"path": rows, "class": [CLASSES[k] for k in p.argmax(1)] if len(p) else []})
    for k, name in enumerate(CLASSES):
        frame[f"p_{name}"] = p[:, k]
    return frame, skipped
