"""Evaluation features of a frozen encoder, cached on disk.

Evaluation inputs are deterministic (no augmentation), so the encoder's features of a test split
can be computed once and reused by every method and job that uses the same encoder. The key is
the encoder id, its weights digest, the split's fingerprint, the image size and the input
transform; the file is written atomically.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .augment import normalize
from .clip_input import CLIP_POLICY, to_clip_input, tower_size
from ..data.cache import DecodedSplit
from ..models.encoders import FrozenEncoder
from .numerics import to_device_batch
from ..core.paths import cache_dir as default_cache_dir

EVAL_TRANSFORM = "resize-bilinear+imagenet-norm"
POLICIES = ("paper", "clip")  # the harness's input (CAFE's) or CLIP's own (benchmark.training.clip_input)


class FeatureCache:
    def __init__(self, root: Path | None = None, enabled: bool = True):
        self.root = Path(root) if root is not None else default_cache_dir() / "features"
        self.enabled = enabled
        self._memory: dict[Path, torch.Tensor] = {}  # features already loaded in this process

    def path(self, encoder: FrozenEncoder, data: DecodedSplit, flipped: bool = False, policy: str = "paper") -> Path:
        transform = (EVAL_TRANSFORM if policy == "paper" else CLIP_POLICY) + ("+hflip" if flipped else "")
        # The encoder's dtype is part of the key: fp16/bf16 features are not the fp32 ones.
        key = "|".join([encoder.id, encoder.weights_digest, data.fingerprint, str(data.size), transform,
                        str(encoder.dtype).removeprefix("torch.")])
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        return self.root / data.dataset.replace("/", "__") / f"{data.split}-{digest}.npy"

    def forget(self) -> None:
        """Drop the in-process copy (the next `get` reads the disk cache or recomputes)."""
        self._memory.clear()

    def get(self, encoder: FrozenEncoder, data: DecodedSplit, device: torch.device, batch_size: int = 128,
            flipped: bool = False, policy: str = "paper") -> torch.Tensor:
        """(N, dim) float32 features of every image of `data` (horizontally flipped if asked), on
        `device`, through the input `policy` ("paper", or "clip": CLIP's own preprocessing)."""
        path = self.path(encoder, data, flipped, policy)
        if path in self._memory:
            return self._memory[path].to(device)
        feats = self._load_or_compute(path, encoder, data, device, batch_size, flipped, policy)
        self._memory = {path: feats}  # keep one split: evaluation walks the splits one by one
        return feats

    def _load_or_compute(self, path: Path, encoder: FrozenEncoder, data: DecodedSplit, device: torch.device,
                         batch_size: int, flipped: bool, policy: str) -> torch.Tensor:
        if self.enabled and path.is_file():
            try:
                cached = np.load(path)
                if cached.shape == (len(data), encoder.dim):
                    return torch.from_numpy(cached).to(device)
            except (OSError, ValueError):
                pass  # unreadable: recompute and overwrite
        feats = encode_split(encoder, data, device, batch_size, flipped, policy)
        if self.enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, feats.cpu().numpy())
            os.replace(tmp, path)
        return feats


def encode_split(encoder: FrozenEncoder, data: DecodedSplit, device: torch.device, batch_size: int = 128,
                 flipped: bool = False, policy: str = "paper") -> torch.Tensor:
    out = []
    for start in range(0, len(data), batch_size):
        x = normalize(to_device_batch(data.read(slice(start, start + batch_size)), device))
        if policy == "clip":
            x = to_clip_input(x, tower_size(encoder.clip_model))
        out.append(encoder(x.flip(-1) if flipped else x))
    return torch.cat(out)
