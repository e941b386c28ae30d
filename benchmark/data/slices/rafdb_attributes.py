"""RAF-DB's demographic groups, from the manual attributes shipped with RAF-DB basic:
`basic/Annotation/manual/<image>_manu_attri.txt`, one per image: five landmark lines (x y), then
gender (0 male, 1 female, 2 unsure), race (0 Caucasian, 1 African-American, 2 Asian) and age
(0: 0-3, 1: 4-19, 2: 20-39, 3: 40-69, 4: 70+), one integer per line.

Slices `rafdb:gender=female`, `rafdb:race=asian`, `rafdb:age=20-39`, ...: the test images whose
file says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...core.errors import DatasetError
from ..base import read_label_text
from ..samples import Samples
from .base import SliceFamily, image_key, register_slice_family, subset

GROUPS = {
    "gender": ("male", "female", "unsure"),
    "race": ("caucasian", "african-american", "asian"),
    "age": ("0-3", "4-19", "20-39", "40-69", "70+"),
}
LANDMARK_LINES = 5
ANNOTATION_DIR = Path("Annotation") / "manual"


def annotation_dir(root: Path | None) -> Path:
    if root is None:
        raise DatasetError("rafdb attributes: the dataset's folder is not known (set --data-root)")
    candidates = [Path(root) / base / ANNOTATION_DIR for base in ("basic", "raf-basic", ".")]
    for path in candidates:
        if path.is_dir():
            return path
    raise DatasetError(f"rafdb attributes: none of {', '.join(map(str, candidates))} exists; RAF-DB basic's "
                       f"{ANNOTATION_DIR.as_posix()}/<image>_manu_attri.txt files are read from there")


def read_attributes(path: Path) -> dict[str, str]:
    """{gender, race, age} -> group name of one `_manu_attri.txt` file."""
    lines = [line.strip() for line in read_label_text(path).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) != LANDMARK_LINES + len(GROUPS):
        raise DatasetError(f"{path}: expected {LANDMARK_LINES} landmark lines then gender, race and age "
                           f"({LANDMARK_LINES + len(GROUPS)} lines), got {len(lines)}")
    for lineno, line in enumerate(lines[:LANDMARK_LINES], start=1):
        try:
            if len([float(v) for v in line.split()]) != 2:
                raise ValueError
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: expected a landmark 'x y', got {line!r}") from None
    out = {}
    for lineno, (attribute, names) in enumerate(GROUPS.items(), start=LANDMARK_LINES + 1):
        line = lines[lineno - 1]
        if not line.isdigit() or int(line) >= len(names):
            raise DatasetError(f"{path}:{lineno}: {attribute} must be one of 0..{len(names) - 1} "
                               f"({', '.join(names)}), got {line!r}")
        out[attribute] = names[int(line)]
    return out


def split_groups(samples: Samples, root: Path | None) -> dict[str, np.ndarray]:
    """Attribute -> each image's group name, in the split's order."""
    folder = annotation_dir(root)
    rows = []
    for sample_id in samples.ids:
        path = folder / f"{image_key(sample_id)}_manu_attri.txt"
        if not path.is_file():
            raise DatasetError(f"{path}: not found; every RAF-DB image has a manual attribute file "
                               f"(for {sample_id})")
        rows.append(read_attributes(path))
    return {attribute: np.asarray([r[attribute] for r in rows]) for attribute in GROUPS}


@register_slice_family
class RafDbGroups(SliceFamily):
    name = "rafdb_groups"
    description = "RAF-DB's manual attributes: gender, race, age groups"

    def offers(self, dataset: str, slice_name: str) -> bool:
        attribute, _, group = slice_name.partition("=")
        return dataset == "rafdb" and group in GROUPS.get(attribute, ())

    def names(self, dataset: str) -> list[str]:
        return [f"{a}={g}" for a, groups in GROUPS.items() for g in groups] if dataset == "rafdb" else []

    def apply(self, samples: Samples, root: Path | None, slice_name: str) -> Samples:
        attribute, _, group = slice_name.partition("=")
        rows = np.flatnonzero(split_groups(samples, root)[attribute] == group)
        if not len(rows):
            raise DatasetError(f"rafdb:{slice_name}: no {samples.split} image is in that group")
        return subset(samples, rows, slice_name)

    def missing(self, samples: Samples, root: Path | None, slice_name: str) -> list[str]:
        folder = annotation_dir(root)
        return [f"{folder / (image_key(i) + '_manu_attri.txt')}: not found (for {i})" for i in samples.ids
                if not (folder / f"{image_key(i)}_manu_attri.txt").is_file()]
