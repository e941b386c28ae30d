"""CK+ (extended Cohn-Kanade): posed sequences from neutral to an expression's peak.

`cohn-kanade-images/S###/###/S###_###_########.png` frames; the labelled sequences have one
`Emotion/S###/###/S###_###_########_emotion.txt` holding one float code (0 neutral, 1 anger,
2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise). The usual 7-class protocol: the
last `peak_frames` (3) frames of a labelled sequence carry its label and its first
`neutral_frames` (1) are neutral; a contempt sequence is dropped whole, neutral frame included;
a sequence without a label file is ignored; `Landmarks/` and `FACS/` are not read. No official
split: test-only by default (see unsplit.py; groups are subjects).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..core.errors import DatasetError
from ..core.labels import CLASSES
from .base import Row, make_samples, read_label_text, register_dataset
from .images import is_image_file
from .samples import NON_BASIC, Samples
from .unsplit import SPLIT_OPTIONS, UnsplitReader, number_option

# CK+ emotion code -> canonical class name; None: contempt (not among the seven).
CODES: dict[int, str | None] = {0: "neutral", 1: "anger", 2: None, 3: "disgust", 4: "fear", 5: "happiness",
                                6: "sadness", 7: "surprise"}
IMAGES, LABELS = "cohn-kanade-images", "Emotion"


def read_code(path: Path) -> int:
    """The integer code of an `_emotion.txt` file (written as a float, e.g. `3.0000000e+00`)."""
    tokens = read_label_text(path).split()
    try:
        (value,) = (float(t) for t in tokens)
    except ValueError:
        raise DatasetError(f"{path}:1: expected one number (the emotion code), got {' '.join(tokens)!r}") from None
    if not value.is_integer() or int(value) not in CODES:
        raise DatasetError(f"{path}:1: emotion code {value:g} is not one of 0-7 "
                           "(0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise)")
    return int(value)


@register_dataset
class CkPlus(UnsplitReader):
    name = "ckplus"
    default_folder = "CK+"
    description = ("CK+: cohn-kanade-images/S###/###/*.png + Emotion/S###/###/*_emotion.txt; last 3 frames "
                   "labelled, first neutral (test only unless train_fraction)")
    options = {"peak_frames": 3, "neutral_frames": 1, **SPLIT_OPTIONS}

    def load(self, root: Path, split: str, *, skip_bad: bool = False, **options: Any) -> Samples:
        options = self.resolve_options(options)
        fraction, seed = self.split_options(options)
        self.check_unsplit(split, fraction)
        peaks = number_option(self.name, "peak_frames", options["peak_frames"], int, 1, 100)
        neutrals = number_option(self.name, "neutral_frames", options["neutral_frames"], int, 0, 100)
        root = Path(root)
        images, labels = root / IMAGES, root / LABELS
        for folder in (images, labels):
            if not folder.is_dir():
                raise DatasetError(f"{folder}: folder not found; expected {root}/{IMAGES}/S###/###/*.png and "
                                   f"{root}/{LABELS}/S###/###/*_emotion.txt")
        rows: list[Row] = []
        subjects: list[str] = []
        dropped: Counter = Counter()
        for sequence in sorted(p for p in labels.glob("*/*") if p.is_dir()):
            label_files = sorted(sequence.glob("*_emotion.txt"))
            if not label_files:
                continue  # an unlabelled sequence (its Emotion folder may exist, empty)
            if len(label_files) > 1:
                raise DatasetError(f"{sequence}: {len(label_files)} emotion files; a sequence has one")
            name = CODES[read_code(label_files[0])]
            frame_dir = images / sequence.relative_to(labels)
            frames = sorted(p for p in frame_dir.iterdir() if is_image_file(p)) if frame_dir.is_dir() else []
            if not frames:
                raise DatasetError(f"{label_files[0]}: labels a sequence with no frames; expected images in {frame_dir}")
            first = frames[:min(neutrals, len(frames) - 1)]
            last = frames[max(len(first), len(frames) - peaks):]
            if name is None:  # contempt: the whole sequence goes
                dropped[NON_BASIC] += len(first) + len(last)
                continue
            where = str(label_files[0])
            rows += [Row(p.relative_to(root).as_posix(), CLASSES.index("neutral"), where) for p in first]
            rows += [Row(p.relative_to(root).as_posix(), CLASSES.index(name), where) for p in last]
            subjects += [sequence.parent.name] * (len(first) + len(last))
        if not rows:
            raise DatasetError(f"{labels}: no labelled sequences (S###/###/*_emotion.txt) inside")
        keep = self.keep_split(split, subjects, fraction, seed)
        variant = self.split_variant(f"peak_frames={peaks}:neutral_frames={neutrals}", fraction, seed)
        return make_samples(self, root, split, variant, [rows[i] for i in keep], skip_bad=skip_bad, dropped=dropped)
