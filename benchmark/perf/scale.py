"""`benchmark perf --scale-images N`: one training epoch over a large synthetic split, with its peak memory.

The split is N images of `size` px built straight into the decoded-image cache format (one
uint8 `images.npy`) with plain file writes, so building it maps nothing into this process.
Its rows are drawn from a pool of synth5 faces (the "wild" domain's training split, at most N of
them, decoded at `size`) with a per-image brightness change; the content does not matter here,
the volume does. One epoch of `erm` then runs through the real trainer (`benchmark.training.trainer.fit`), which
reads batches with positioned reads (DecodedSplit.read), so the peak resident memory stays
that of the model and one batch, not of the N-image array.
"""

from __future__ import annotations

import resource
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..data import DATASETS, decode_split
from ..data.cache import DecodedSplit

CHUNK = 1024


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; since the last reset_peak_rss where supported)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the lifetime peak


def reset_peak_rss() -> bool:
    """Start a new peak-memory window (Linux: writing 5 to /proc/self/clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def build_large_split(n: int, size: int, folder: Path, seed: int = 0, pool_scale: float = 1.0) -> DecodedSplit:
    pool_samples = DATASETS.get("synth5/wild").load(None, "train", scale=pool_scale)
    pool = decode_split(pool_samples, size, cache_dir=folder / "pool")
    pool_images, pool_labels = pool.read(slice(0, len(pool))), pool.labels
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "images.npy"
    labels = np.empty(n, dtype=np.int64)
    with open(path, "wb") as fh:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                  "shape": (n, size, size, 3)}
        np.lib.format.write_array_header_2_0(fh, header)
        for start in range(0, n, CHUNK):
            count = min(CHUNK, n - start)
            pick = rng.integers(0, len(pool_images), count)
            gain = rng.uniform(0.7, 1.3, (count, 1, 1, 1)).astype(np.float32)
            fh.write(np.clip(pool_images[pick] * gain, 0, 255).astype(np.uint8).tobytes())
            labels[start:start + count] = pool_labels[pick]
    images = np.load(path, mmap_mode="r")
    return DecodedSplit(images=images, labels=labels, kept=np.arange(n), dataset=f"scale{n}", split="train",
                        fingerprint=f"scale-{n}-{size}-{seed}", size=size, dropped=Counter(), path=folder)


def scale_check(n: int, size: int, backbone: str, precision: str, batch_size: int, device: torch.device,
                work: Path) -> dict:
    """Build an n-image split at `size` px and train `erm` on it for one epoch; times and peak memory."""
    from ..training.method import Components, MemoryLog
    from ..training.plugins import build_method

    from ..models.backbones import BackboneSpec
    from ..training.recipe import Recipe

    start = time.perf_counter()
    # A pool of faces no larger than the split (the whole wild domain past 2,400 images): generating
    # the full pool for a small check would cost more than its epoch.
    wild_train = DATASETS.get("synth5/wild").style.counts["train"]
    data = build_large_split(n, size, work / "scale", pool_scale=min(1.0, n / wild_train))
    build_s = time.perf_counter() - start
    build_peak = peak_rss_mb()
    window_reset = reset_peak_rss()  # the training epoch's own peak, not the build's
    name, _, weights = backbone.rpartition(":")
    method = build_method("erm", components=Components(BackboneSpec(name, weights)))
    recipe = Recipe(epochs=1, batch_size=batch_size, input_size=size, precision=precision, progress=False)
    start = time.perf_counter()
    method.fit(data, recipe=recipe, device=device, log=MemoryLog())
    epoch_s = time.perf_counter() - start
    return {"images": n, "size": size, "backbone": backbone, "precision": precision,
            "cache_mb": data.images.nbytes / 2**20, "build_s": build_s, "epoch_s": epoch_s,
            "images_per_s": n / epoch_s, "peak_rss_mb_build": build_peak,
            "peak_rss_mb": peak_rss_mb(), "peak_rss_training_only": window_reset}
