"""ExpW (Expression in-the-Wild): web photographs, each face boxed and labelled.

`image/origin/<name>.jpg` and `label/label.lst`, one line per face:
`image_name face_id top left right bottom confidence label` (note the box order: top, left,
right, bottom; codes 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral, mapped
by an explicit table). A sample is the face box cropped from its image, so one photograph can
give several samples with different labels; ids are `image/origin/<name>#<face_id>`. Faces whose
detection confidence is below the option `min_confidence` (default 0: all) are dropped. No
official split: test-only by default (see unsplit.py; groups are photographs).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DatasetError
from ..core.labels import CLASSES
from .base import map_code, read_label_text, register_dataset
from .samples import MISSING_FILE, Samples
from .unsplit import SPLIT_OPTIONS, UnsplitReader, number_option

CODES: dict[int, int | None] = {code: CLASSES.index(name) for code, name in enumerate(
    ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"))}
LOW_CONFIDENCE = "below min_confidence"
FIELDS = "image_name face_id top left right bottom confidence label"


@register_dataset
class ExpW(UnsplitReader):
    name = "expw"
    default_folder = "ExpW"
    description = ("ExpW: image/origin/*.jpg + label/label.lst (name face top left right bottom conf label); "
                   "face crops (test only unless train_fraction)")
    options = {"min_confidence": 0.0, **SPLIT_OPTIONS}

    def load(self, root: Path, split: str, *, skip_bad: bool = False, **options: Any) -> Samples:
        options = self.resolve_options(options)
        fraction, seed = self.split_options(options)
        self.check_unsplit(split, fraction)
        min_confidence = number_option(self.name, "min_confidence", options["min_confidence"], float, -1e9, 1e9)
        root = Path(root)
        label_file = root / "label" / "label.lst"
        images = root / "image" / "origin"
        if not images.is_dir():
            raise DatasetError(f"{images}: folder not found; expected {root}/image/origin/*.jpg beside {label_file}")
        ids: list[str] = []
        labels: list[int] = []
        boxes: list[tuple[int, int, int, int]] = []
        sizes: list[int] = []
        groups: list[str] = []
        dropped: Counter = Counter()
        seen: dict[str, int] = {}
        for lineno, line in enumerate(read_label_text(label_file).splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{label_file}:{lineno}"
            if len(fields) != 8:
                raise DatasetError(f"{where}: expected 8 fields ({FIELDS}), got {len(fields)}")
            name, face = fields[0], fields[1]
            try:
                top, left, right, bottom = (int(float(v)) for v in fields[2:6])
                confidence = float(fields[6])
            except ValueError:
                raise DatasetError(f"{where}: box and confidence must be numbers, got {' '.join(fields[2:7])!r}") from None
            if right <= left or bottom <= top:
                raise DatasetError(f"{where}: empty face box (top {top}, left {left}, right {right}, bottom {bottom})")
            label = map_code(label_file, lineno, fields[7], CODES)
            sample_id = f"image/origin/{name}#{face}"
            if sample_id in seen:
                raise DatasetError(f"{where}: face {face} of {name} is listed twice (first at line {seen[sample_id]})")
            seen[sample_id] = lineno
            if confidence < min_confidence:
                dropped[LOW_CONFIDENCE] += 1
                continue
            try:
                size = os.stat(images / name).st_size
            except FileNotFoundError:
                if not skip_bad:
                    raise DatasetError(f"{where}: image {images / name} does not exist "
                                       "(use --skip-bad to drop such rows and count them)") from None
                dropped[MISSING_FILE] += 1
                continue
            ids.append(sample_id)
            labels.append(label)
            boxes.append((left, top, right, bottom))
            sizes.append(size)
            groups.append(name)
        if not ids:
            raise DatasetError(f"{label_file}: no faces kept (of {len(seen)} listed)")
        keep = self.keep_split(split, groups, fraction, seed)
        variant = self.split_variant(f"face-crops:min_confidence={min_confidence:g}", fraction, seed)
        return Samples(self.name, split, root, [ids[i] for i in keep], np.asarray(labels)[keep], variant,
                       dropped=dropped, file_sizes=np.asarray(sizes)[keep], boxes=np.asarray(boxes)[keep])
