"""FERPlus: Microsoft's 10-annotator votes over FER2013, majority-voted into the seven classes.

Two image layouts: the PNG folders made by the FERPlus generation script (each with its own
label.csv), or the original Kaggle fer2013.csv pixel table beside fer2013new.csv.
"""

from __future__ import annotations

import csv
import io
from itertools import zip_longest
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DatasetError
from .base import DatasetReader, Row, make_samples, read_label_text, register_dataset
from .fer2013 import parse_pixels
from .samples import NO_FACE, NON_BASIC, Samples

VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                "contempt", "unknown", "NF")
# Vote column -> canonical index; None = dropped (contempt, unknown: non-basic; NF: no face).
COLUMN_TO_CANONICAL: tuple[int | None, ...] = (6, 3, 0, 4, 5, 2, 1, None, None, None)
SPLIT_FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
SPLIT_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}


def majority_label(votes: list[str], where: str) -> tuple[int | None, str | None]:
    """(canonical label, None) or (None, drop reason) for one row of 10 vote counts.

    The winner is the column with the most votes, ties going to the earlier column as the
    reference scripts do; contempt, unknown and NF winners are dropped.
    """
    if len(votes) != len(VOTE_COLUMNS):
        raise DatasetError(f"{where}: expected {len(VOTE_COLUMNS)} vote columns "
                           f"({','.join(VOTE_COLUMNS)}), got {len(votes)}")
    try:
        counts = np.array([float(v) for v in votes])
    except ValueError:
        raise DatasetError(f"{where}: vote counts must be numbers, got {votes}") from None
    if counts.sum() <= 0:
        return None, NON_BASIC
    winner = int(np.argmax(counts))  # first maximum = earlier column on ties
    label = COLUMN_TO_CANONICAL[winner]
    if label is None:
        return None, NO_FACE if VOTE_COLUMNS[winner] == "NF" else NON_BASIC
    return label, None


@register_dataset
class FerPlus(DatasetReader):
    name = "ferplus"
    default_folder = "FERPlus"
    description = "FERPlus: FER2013Train|Valid|Test/ with label.csv, or fer2013.csv + fer2013new.csv"
    splits = ("train", "val", "test")

    def load(self, root: Path, split: str, *, skip_bad: bool = False, **options: Any) -> Samples:
        self.check_split(split)
        self.resolve_options(options)
        root = Path(root)
        for base in (root, root / "data"):
            if (base / SPLIT_FOLDERS[split] / "label.csv").is_file():
                return self._load_folders(root, base, split, skip_bad)
        for base in (root, root / "data"):
            if (base / "fer2013.csv").is_file():
                return self._load_pixel_csv(root, base, split)
        raise DatasetError(
            f"{root}: not a FERPlus folder; expected {SPLIT_FOLDERS[split]}/label.csv with PNGs "
            "(FERPlus generation script) or fer2013.csv beside fer2013new.csv (Kaggle FER2013)"
        )

    def _load_folders(self, root: Path, base: Path, split: str, skip_bad: bool) -> Samples:
        folder = base / SPLIT_FOLDERS[split]
        label_file = folder / "label.csv"
        dropped: Counter = Counter()
        rows: list[Row] = []
        with io.StringIO(read_label_text(label_file), newline="") as fh:
            reader = csv.reader(fh)
            for record in reader:
                if not record or not "".join(record).strip():
                    continue
                where = f"{label_file}:{reader.line_num}"
                if len(record) != 2 + len(VOTE_COLUMNS):
                    raise DatasetError(f"{where}: expected image name, face box and "
                                       f"{len(VOTE_COLUMNS)} vote columns, got {len(record)} fields")
                label, reason = majority_label(record[2:], where)
                if reason:
                    dropped[reason] += 1
                    continue
                rel = (folder / record[0].strip()).relative_to(root).as_posix()
                rows.append(Row(rel, label, where))
        return make_samples(self, root, split, "png-folders", rows, skip_bad=skip_bad, dropped=dropped)

    def _load_pixel_csv(self, root: Path, base: Path, split: str) -> Samples:
        pixels_file = base / "fer2013.csv"
        votes_file = base / "fer2013new.csv"
        if not votes_file.is_file():
            raise DatasetError(f"{votes_file}: not found; the FERPlus labels (Microsoft's fer2013new.csv) "
                               f"must sit beside {pixels_file}")
        usage = SPLIT_USAGE[split]
        dropped: Counter = Counter()
        ids: list[str] = []
        labels: list[int] = []
        images: list[np.ndarray] = []
        with io.StringIO(read_label_text(pixels_file), newline="") as fp, \
                io.StringIO(read_label_text(votes_file), newline="") as fv:
            pixel_rows, vote_rows = csv.reader(fp), csv.reader(fv)
            pixel_header, vote_header = next(pixel_rows, None), next(vote_rows, None)
            if pixel_header is None or [h.strip() for h in pixel_header[:3]] != ["emotion", "pixels", "Usage"]:
                raise DatasetError(f"{pixels_file}:1: expected header 'emotion,pixels,Usage', got {pixel_header}")
            expected_votes = ["Usage", "Image name", *VOTE_COLUMNS]
            if vote_header is None or [h.strip() for h in vote_header] != expected_votes:
                raise DatasetError(f"{votes_file}:1: expected header {','.join(expected_votes)}, got {vote_header}")
            for index, (pixel_row, vote_row) in enumerate(zip_longest(pixel_rows, vote_rows)):
                if pixel_row is None or vote_row is None:
                    longer = pixels_file if vote_row is None else votes_file
                    raise DatasetError(f"{longer}: has more rows than its partner file (from data row {index}); "
                                       "fer2013.csv and fer2013new.csv must list the same images in the same order")
                where = f"{votes_file}:{vote_rows.line_num}"
                if len(pixel_row) < 3:
                    raise DatasetError(f"{pixels_file}:{pixel_rows.line_num}: expected emotion,pixels,Usage")
                if pixel_row[2].strip() != vote_row[0].strip():
                    raise DatasetError(
                        f"{where}: Usage {vote_row[0]!r} differs from {pixels_file}:{pixel_rows.line_num} "
                        f"({pixel_row[2]!r}); the two files must list the same images in the same order")
                if vote_row[0].strip() != usage:
                    continue
                if not vote_row[1].strip():
                    dropped[NO_FACE] += 1
                    continue
                label, reason = majority_label(vote_row[2:], where)
                if reason:
                    dropped[reason] += 1
                    continue
                images.append(parse_pixels(pixel_row[1], f"{pixels_file}:{pixel_rows.line_num}"))
                ids.append(f"{pixels_file.relative_to(root).as_posix()}#{index}")
                labels.append(label)
        if not ids:
            raise DatasetError(f"{pixels_file}: no rows with Usage={usage} (the {split} split)")
        return Samples(self.name, split, root, ids, np.asarray(labels), "pixel-csv",
                       dropped=dropped, pixels=np.stack(images))
