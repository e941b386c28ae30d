"""A trained method as an image classifier: encoded image bytes in, the seven canonical classes'
probabilities out. `benchmark predict`, the MLflow pyfunc model and `mlflow models serve` all go
through `ImageClassifier.probabilities`, so they give the same numbers.

The input policy is the harness's evaluation path: decode with PIL as RGB, resize bilinearly to the
recipe's input size (benchmark.data.images), then the method's own normalisation in `predict`.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.errors import BenchmarkError
from ..core.labels import CLASSES
from ..data.cache import DecodedSplit
from ..data.images import resize_square
from ..models.specs import EncoderSpec
from ..training import checkpoint

ENCODER_FILE = "encoder.weights"  # a bundled encoder's weights, beside the checkpoint's files


class NotAnImage(ValueError):
    """Bytes PIL cannot decode as an image."""


def decode(data: bytes, size: int, name: str = "input") -> np.ndarray:
    """(size, size, 3) uint8 from an encoded image, as the harness's image cache decodes files."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return resize_square(img.convert("RGB"), size)
    except UnidentifiedImageError:
        raise NotAnImage(f"{name}: not an image (no image format PIL reads)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # a truncated or damaged image
        raise NotAnImage(f"{name}: unreadable image ({exc})") from None


def encoder_spec(folder: Path, spec: dict) -> EncoderSpec | None:
    """The encoder the checkpoint was trained with: the bundled file when the model carries one,
    else the spec's id resolved from the local caches, checked against the recorded digest."""
    if not spec.get("encoder"):
        return None
    encoder = EncoderSpec(**spec["encoder"])
    bundled = folder / ENCODER_FILE
    if bundled.is_file():
        return replace(encoder, path=str(bundled))
    from ..models.encoders import encoder_weights_file
    from ..models.weights import WeightsError, file_digest

    wanted = spec.get("encoder_digest")
    try:
        path = encoder_weights_file(encoder)
    except WeightsError as exc:
        raise BenchmarkError(f"this model needs the frozen encoder {encoder.id} (digest {wanted or 'unrecorded'}), "
                             f"not bundled with it and not found here: {exc}") from None
    if path is not None and wanted and (found := file_digest(str(path.resolve()))) != wanted:
        raise BenchmarkError(f"{path}: encoder {encoder.id} has digest {found}, the model was trained with {wanted}")
    return replace(encoder, path=None if path is None else str(path))


@dataclass
class ImageClassifier:
    method: object  # a Method ready to predict
    spec: dict  # the checkpoint's method.json

    @classmethod
    def load(cls, folder: Path, device: str | None = None) -> "ImageClassifier":
        from ..training.trainer import pick_device

        spec = checkpoint.read_spec(folder)
        method, spec = checkpoint.load(folder, pick_device(device), encoder=encoder_spec(folder, spec),
                                       cache_features=False)
        return cls(method, spec)

    @property
    def input_size(self) -> int:
        return int(self.spec["input_size"])

    def probabilities(self, images: list[bytes]) -> np.ndarray:
        """(N, 7) class probabilities of encoded images, in CLASSES order; NotAnImage names the
        first that does not decode."""
        pixels = np.stack([decode(b, self.input_size, f"image {k}") for k, b in enumerate(images)]) if images else \
            np.zeros((0, self.input_size, self.input_size, 3), np.uint8)
        return self.probabilities_of_pixels(pixels)

    def probabilities_of_pixels(self, pixels: np.ndarray) -> np.ndarray:
        digest = hashlib.sha256(pixels.tobytes()).hexdigest()[:16]
        split = DecodedSplit(images=pixels, labels=np.zeros(len(pixels), np.int64), kept=np.arange(len(pixels)),
                             dataset="input", split="predict", fingerprint=f"predict-{digest}", size=self.input_size,
                             dropped=Counter(), path=Path("."))
        probs = np.asarray(self.method.predict(split), dtype=np.float64)
        if probs.shape[1:] != (len(CLASSES),):
            raise BenchmarkError(f"method {self.spec['method']} predicted shape {probs.shape}, expected (N, 7)")
        return probs

