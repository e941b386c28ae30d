"""AffectNet: the official Manually_Annotated CSV lists, or re-packaged class folders."""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import Any

from ..core.errors import DatasetError
from .base import DatasetReader, Row, make_samples, map_code, read_label_text, register_dataset, scan_class_folders
from .samples import NO_FACE, NON_BASIC, Samples

# Native codes: 0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger,
# 7 contempt, 8 none, 9 uncertain, 10 no-face. None = dropped.
NATIVE_TO_CANONICAL: dict[int, int | None] = {0: 6, 1: 3, 2: 4, 3: 0, 4: 1, 5: 2, 6: 5,
                                              7: None, 8: None, 9: None, 10: None}
NO_FACE_CODE = 10
LIST_DIR = "Manually_Annotated_file_lists"
LIST_FILES = {"train": "training.csv", "test": "validation.csv"}
IMAGE_DIRS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images",
              "AffectNet_sota_Manually_Annotated_Images")
HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
          "facial_landmarks", "expression", "valence", "arousal"]
EXPRESSION_COLUMN = HEADER.index("expression")
# Re-packaged layouts: which folder holds each harness split.
FOLDER_SPLITS = {"train": ("train",), "test": ("val", "validation", "test")}


@register_dataset
class AffectNet(DatasetReader):
    name = "affectnet"
    default_folder = "AffectNet"
    description = "AffectNet: Manually_Annotated_file_lists/{training,validation}.csv + images, or train|val/<0..7|class>/"
    splits = ("train", "test")

    def load(self, root: Path, split: str, *, skip_bad: bool = False, **options: Any) -> Samples:
        self.check_split(split)
        self.resolve_options(options)
        root = Path(root)
        list_file = root / LIST_DIR / LIST_FILES[split]
        if list_file.is_file():
            return self._load_lists(root, list_file, split, skip_bad)
        for folder in FOLDER_SPLITS[split]:
            if (root / folder).is_dir():
                dropped: Counter = Counter()
                table = {str(code): canonical for code, canonical in NATIVE_TO_CANONICAL.items()}
                rows = scan_class_folders(root / folder, root, dropped, code_table=table)
                return make_samples(self, root, split, "class-folders", rows, skip_bad=skip_bad, dropped=dropped)
        raise DatasetError(
            f"{root}: not an AffectNet folder; expected {LIST_DIR}/{LIST_FILES[split]} (official) or "
            f"{FOLDER_SPLITS[split][0]}/<0..7 or class name>/ (re-packaged)"
        )

    def _load_lists(self, root: Path, list_file: Path, split: str, skip_bad: bool) -> Samples:
        image_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
        if image_dir is None:
            raise DatasetError(f"{root}: image folder not found; expected one of {', '.join(IMAGE_DIRS)}")
        dropped: Counter = Counter()
        rows: list[Row] = []
        with io.StringIO(read_label_text(list_file), newline="") as fh:
            reader = csv.reader(fh)
            for record in reader:
                if not record:
                    continue
                if reader.line_num == 1 and record[0].strip() == HEADER[0]:
                    continue  # training.csv has a header; some copies of validation.csv do not
                where = f"{list_file}:{reader.line_num}"
                if len(record) <= EXPRESSION_COLUMN:
                    raise DatasetError(f"{where}: expected columns {','.join(HEADER)}, got {len(record)} fields")
                token = record[EXPRESSION_COLUMN].strip()
                label = map_code(list_file, reader.line_num, token, NATIVE_TO_CANONICAL)
                if label is None:
                    dropped[NO_FACE if int(token) == NO_FACE_CODE else NON_BASIC] += 1
                    continue
                rel = (image_dir / record[0].strip()).relative_to(root).as_posix()
                rows.append(Row(rel, label, where))
        return make_samples(self, root, split, "official-lists", rows, skip_bad=skip_bad, dropped=dropped)
