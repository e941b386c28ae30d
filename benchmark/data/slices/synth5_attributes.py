"""synth5's own slices, from what its generator decided for each image
(benchmark.data.synth5.split_attributes), so the slice machinery runs without licensed data:

    occluded           an occluder was drawn on the face (wild: 15% of images)
    pose30             the head turned by 30 degrees or more (|yaw| x 90 >= 30; wild and film)
    group=glasses|beard|plain      the identity's glasses or beard, or neither (lowres's identities)
    skin=dark|medium|light         the identity's skin tone, by its drawn factor (< 0.5, < 0.75, else)

The generator's images, digests and every job hash stay as they were.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...core.errors import DatasetError
from ..samples import Samples
from .base import SliceFamily, register_slice_family, subset

YAW_DEGREES = 90.0  # a face's yaw in [-1, 1] read as a head turn of yaw x 90 degrees
GROUPS = {"group": ("glasses", "beard", "plain"), "skin": ("dark", "medium", "light")}
SLICES = ("occluded", "pose30", *(f"{a}={g}" for a, groups in GROUPS.items() for g in groups))


def groups_of(attributes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Attribute -> each image's group name."""
    glasses, beard = attributes["glasses"].astype(bool), attributes["beard"].astype(bool)
    group = np.where(glasses, "glasses", np.where(beard, "beard", "plain"))
    tone = attributes["tone"]
    skin = np.where(tone < 0.5, "dark", np.where(tone < 0.75, "medium", "light"))
    return {"group": group, "skin": skin}


def slice_rows(attributes: dict[str, np.ndarray], slice_name: str) -> np.ndarray:
    if slice_name == "occluded":
        return np.flatnonzero(attributes["occluded"])
    if slice_name == "pose30":
        return np.flatnonzero(np.abs(attributes["yaw"]) * YAW_DEGREES >= 30)
    attribute, _, group = slice_name.partition("=")
    return np.flatnonzero(groups_of(attributes)[attribute] == group)


@register_slice_family
class Synth5Slices(SliceFamily):
    name = "synth5"
    description = "synth5's generator attributes: occluded, pose30, group=glasses|beard|plain, skin=..."

    def offers(self, dataset: str, slice_name: str) -> bool:
        return dataset.startswith("synth5/") and slice_name in SLICES

    def names(self, dataset: str) -> list[str]:
        return list(SLICES) if dataset.startswith("synth5/") else []

    def apply(self, samples: Samples, root: Path | None, slice_name: str) -> Samples:
        from ..synth5 import split_attributes

        seed, scale = _seed_scale(samples)
        attributes = split_attributes(samples.dataset.split("/", 1)[1], samples.split, seed, scale)
        rows = slice_rows(attributes, slice_name)
        if not len(rows):
            raise DatasetError(f"{samples.dataset}:{slice_name}: no {samples.split} image of this domain is "
                               f"{slice_name} (docs/slices.md lists which domains have which)")
        return subset(samples, rows, slice_name)


def _seed_scale(samples: Samples) -> tuple[int, float]:
    """The generator's seed and scale, from the variant its reader records (`generated:seed0:scale1`)."""
    _, seed, scale = samples.variant.split(":")
    return int(seed.removeprefix("seed")), float(scale.removeprefix("scale"))
