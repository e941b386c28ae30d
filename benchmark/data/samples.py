"""What a dataset reader returns: the kept samples of one split, with what was dropped and why."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from typing import Any

import numpy as np

from ..core.labels import CLASSES

SPLITS = ("train", "val", "test")

# Reasons a row of a label file or an image is dropped. The same strings appear in
# `benchmark datasets check` output and in MLflow params.
NON_BASIC = "non-basic class"
NO_FACE = "no face"
MISSING_FILE = "missing file"
UNREADABLE = "unreadable image"


@dataclass
class Samples:
    """The kept samples of one split of one dataset.

    `ids` are paths relative to `root` with forward slashes (the manifest's `path` column); for
    data that has no image files (FER2013's pixel CSV, synth5) they are `<file>#<row>` references
    and `pixels` holds the images. `labels` are canonical indices (see `benchmark.core.labels`).
    """

    dataset: str
    split: str
    root: Path
    ids: list[str]
    labels: np.ndarray
    variant: str
    dropped: Counter = field(default_factory=Counter)
    pixels: np.ndarray | None = None
    file_sizes: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    fingerprint: str = ""
    channel_order: str = "rgb"  # "bgr": images are fed channel-swapped (benchmark.jobs.plan.DataPlan)
    # (N, 4) face boxes (left, top, right, bottom) in the file's pixels, cropped before resizing
    # (ExpW: one image, several faces); the ids are then `<path>#<face>` and `path` drops the `#<face>`.
    boxes: np.ndarray | None = None
    # A digest of the whole dataset as its reader made it, where there is one (synth5: the generated
    # domain, benchmark.data.synth5.domain_digest); MLflow shows it as the run input's digest.
    content_digest: str = ""
    # A pixel transform applied to each image after it is decoded and resized, called with the
    # (H, W, 3) uint8 image and the image's id (a corruption slice, benchmark.data.slices); its
    # `key` enters the fingerprint, so the transformed split is cached as its own.
    transform: Any = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.ids) != len(self.labels):
            raise ValueError(f"{len(self.ids)} ids but {len(self.labels)} labels")
        if self.pixels is not None and len(self.pixels) != len(self.ids):
            raise ValueError(f"{len(self.ids)} ids but {len(self.pixels)} images")
        if self.boxes is not None:
            self.boxes = np.asarray(self.boxes, dtype=np.int64).reshape(-1, 4)
            if len(self.boxes) != len(self.ids):
                raise ValueError(f"{len(self.ids)} ids but {len(self.boxes)} face boxes")
        if not self.fingerprint:
            self.fingerprint = fingerprint(self)

    def __len__(self) -> int:
        return len(self.ids)

    def path(self, i: int) -> Path:
        return self.root / (self.ids[i].rsplit("#", 1)[0] if self.boxes is not None else self.ids[i])

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(CLASSES))
        return {name: int(counts[k]) for k, name in enumerate(CLASSES)}


def printable_id(sample_id: str) -> str:
    """A sample id as UTF-8 text: bytes of a file name that are not UTF-8 shown as \\xNN."""
    return sample_id.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def fingerprint(samples: Samples) -> str:
    """A digest of what was parsed: ids, labels and the image bytes or file sizes.

    A changed label file, an added/removed image or a replaced file of another size all change
    it; moving the data root does not (ids are relative).
    """
    h = hashlib.sha256()
    h.update(json.dumps([samples.dataset, samples.split, samples.variant]).encode())
    if samples.channel_order != "rgb":  # only then: the RGB fingerprints stay what they were
        h.update(f"channel_order={samples.channel_order}".encode())
    # Any name the file system holds: undecodable bytes come back as they were (surrogateescape).
    h.update("\n".join(samples.ids).encode("utf-8", "surrogateescape"))
    h.update(samples.labels.tobytes())
    if samples.pixels is not None:
        h.update(np.ascontiguousarray(samples.pixels).data)
    if samples.boxes is not None:
        h.update(b"boxes" + np.ascontiguousarray(samples.boxes, dtype=np.int64).tobytes())
    if samples.file_sizes is not None:
        h.update(np.asarray(samples.file_sizes, dtype=np.int64).tobytes())
    if samples.transform is not None:  # only then: the other fingerprints stay what they were
        h.update(f"transform={samples.transform.key}".encode())
    return h.hexdigest()[:16]
