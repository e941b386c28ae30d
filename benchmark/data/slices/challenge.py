"""The challenge-condition test subsets released with RAN (Wang et al., TIP 2020;
kaiwang960112/Challenge-condition-FER-dataset): Occlusion, Pose >= 30 and Pose >= 45 of RAF-DB,
FERPlus and AffectNet, as file lists that name test images.

The lists are read from the user's copy of the dataset (nothing is shipped), from the first of
PLACES under the dataset's folder that holds them, under their released names. An entry's
image is matched by its stem (benchmark.data.slices.base.image_key), whatever folder layout the
dataset is in; only the first field of a line is read (the labels in the lists are RAN's own
order; the slice keeps the dataset's labels).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...core.errors import DatasetError
from ..base import read_label_text
from ..samples import Samples
from .base import SliceFamily, image_key, register_slice_family, subset

LISTS = {
    "rafdb": {"occlusion": "rafdb_occlusion_list.txt", "pose30": "val_raf_db_list.txt",
              "pose45": "val_raf_db_list_45.txt"},
    "ferplus": {"occlusion": "jianfei_occlusion_list.txt", "pose30": "pose_30_ferplus_list.txt",
                "pose45": "pose_45_ferplus_list.txt"},
    "affectnet": {"occlusion": "occlusion_affectnet_list.txt", "pose30": "pose_30_affectnet_list.txt",
                  "pose45": "pose_45_affectnet_list.txt"},
}
PLACES = ("", "basic/EmoLabel", "EmoLabel", "challenge")  # relative to the dataset's folder
HEADERS = ("subdirectory_filepath", "image", "name", "path")


def list_file(dataset: str, root: Path | None, slice_name: str) -> Path:
    name = LISTS[dataset][slice_name]
    if root is None:
        raise DatasetError(f"{dataset}:{slice_name}: the dataset's folder is not known (set --data-root)")
    candidates = [Path(root) / place / name for place in PLACES]
    for path in candidates:
        if path.is_file():
            return path
    raise DatasetError(f"{dataset}:{slice_name}: {name} not found; looked in "
                       f"{', '.join(str(c.parent) for c in candidates)} (RAN's challenge-condition lists, "
                       "docs/datasets.md says where to get them)")


def read_list(path: Path) -> list[tuple[int, str]]:
    """(line number, image key) per entry: the first comma- or space-separated field of each line."""
    entries = []
    for lineno, line in enumerate(read_label_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        first = re.split(r"[,\s]+", line.strip(), maxsplit=1)[0]
        if lineno == 1 and first.lower() in HEADERS:
            continue
        key = image_key(first)
        if not key or not re.search(r"[A-Za-z0-9]", key):
            raise DatasetError(f"{path}:{lineno}: expected an image name as the line's first field, got {line!r}")
        entries.append((lineno, key))
    if not entries:
        raise DatasetError(f"{path}: names no image")
    return entries


@register_slice_family
class ChallengeConditions(SliceFamily):
    name = "challenge"
    description = "RAN's Occlusion, Pose>=30, Pose>=45 test lists (RAF-DB, FERPlus, AffectNet)"

    def offers(self, dataset: str, slice_name: str) -> bool:
        return slice_name in LISTS.get(dataset, {})

    def names(self, dataset: str) -> list[str]:
        return list(LISTS.get(dataset, {}))

    def _keys(self, samples: Samples) -> list[str]:
        if samples.split != "test":
            raise DatasetError(f"{samples.dataset}: the challenge-condition lists name test images, not {samples.split}")
        return [image_key(i) for i in samples.ids]

    def apply(self, samples: Samples, root: Path | None, slice_name: str) -> Samples:
        keys = self._keys(samples)
        listed = {key for _, key in read_list(list_file(samples.dataset, root, slice_name))}
        rows = np.flatnonzero([k in listed for k in keys])
        if not len(rows):
            raise DatasetError(f"{samples.dataset}:{slice_name}: no image of its list is in the {samples.split} "
                               f"split read from {root} (benchmark datasets check names the entries)")
        return subset(samples, rows, slice_name)

    def missing(self, samples: Samples, root: Path | None, slice_name: str) -> list[str]:
        path = list_file(samples.dataset, root, slice_name)
        known = set(self._keys(samples))
        return [f"{path}:{lineno}: {key} is not an image of the {samples.split} split"
                for lineno, key in read_list(path) if key not in known]
