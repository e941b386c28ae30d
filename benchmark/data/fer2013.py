"""FER2013 with its original Kaggle labels: `fer2013.csv` rows `emotion,pixels,Usage`.

Codes 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral, mapped by an explicit
table; Usage Training / PublicTest / PrivateTest are train / val / test, whatever order the rows
come in. Each image is 48x48 grey, 2,304 space-separated values. (FERPlus relabels the same
images by ten annotators' votes: that is the `ferplus` reader.)
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DatasetError
from ..core.labels import CLASSES
from .base import DatasetReader, map_code, read_label_text, register_dataset
from .samples import Samples

CODES: dict[int, int | None] = {code: CLASSES.index(name) for code, name in enumerate(
    ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"))}
USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
SIDE = 48
HEADER = ["emotion", "pixels", "Usage"]


def parse_pixels(text: str, where: str) -> np.ndarray:
    """One row's `pixels` field as a 48x48 uint8 image."""
    values = text.split()
    if len(values) != SIDE * SIDE:
        raise DatasetError(f"{where}: expected {SIDE * SIDE} pixel values, got {len(values)}")
    try:
        image = np.array(values, dtype=np.int64)
    except ValueError:
        raise DatasetError(f"{where}: pixel values must be integers 0-255") from None
    if image.min() < 0 or image.max() > 255:
        raise DatasetError(f"{where}: pixel values must be integers 0-255, got {image.min()}..{image.max()}")
    return image.astype(np.uint8).reshape(SIDE, SIDE)


@register_dataset
class Fer2013(DatasetReader):
    name = "fer2013"
    default_folder = "FER2013"
    description = "FER2013 (Kaggle labels): fer2013.csv emotion,pixels,Usage (Training|PublicTest|PrivateTest)"
    splits = ("train", "val", "test")

    def load(self, root: Path, split: str, *, skip_bad: bool = False, **options: Any) -> Samples:
        self.check_split(split)
        self.resolve_options(options)
        root = Path(root)
        path = next((p for p in (root / "fer2013.csv", root / "fer2013" / "fer2013.csv") if p.is_file()), None)
        if path is None:
            raise DatasetError(f"{root}: fer2013.csv not found; expected {root}/fer2013.csv (emotion,pixels,Usage)")
        ids, labels, images = [], [], []
        with io.StringIO(read_label_text(path), newline="") as fh:
            rows = csv.reader(fh)
            header = next(rows, None)
            if header is None or [h.strip() for h in header[:3]] != HEADER:
                raise DatasetError(f"{path}:1: expected header 'emotion,pixels,Usage', got {header}")
            for index, row in enumerate(rows):
                if not row:
                    continue
                where = f"{path}:{rows.line_num}"
                if len(row) < 3:
                    raise DatasetError(f"{where}: expected emotion,pixels,Usage, got {len(row)} field(s)")
                if row[2].strip() not in USAGE.values():
                    raise DatasetError(f"{where}: Usage {row[2]!r} is not one of {', '.join(USAGE.values())}")
                if row[2].strip() != USAGE[split]:
                    continue
                labels.append(map_code(path, rows.line_num, row[0].strip(), CODES))
                images.append(parse_pixels(row[1], where))
                ids.append(f"{path.relative_to(root).as_posix()}#{index}")
        if not ids:
            raise DatasetError(f"{path}: no rows with Usage={USAGE[split]} (the {split} split)")
        return Samples(self.name, split, root, ids, np.asarray(labels), "kaggle-csv", pixels=np.stack(images))
