"""MMA (MMAFEDB): Kaggle layout {train,valid,test}/<class>/, with or without MMAFEDB/ on top."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..core.errors import DatasetError
from .base import DatasetReader, make_samples, register_dataset, scan_class_folders
from .samples import Samples

SPLIT_FOLDER = {"train": "train", "val": "valid", "test": "test"}


@register_dataset
class Mma(DatasetReader):
    name = "mma"
    default_folder = "MMA"
    description = "MMA (MMAFEDB): [MMAFEDB/]{train,valid,test}/<angry..surprise>/*.jpg"
    splits = ("train", "val", "test")

    def load(self, root: Path, split: str, *, skip_bad: bool = False, **options: Any) -> Samples:
        self.check_split(split)
        self.resolve_options(options)
        root = Path(root)
        folder_name = SPLIT_FOLDER[split]
        for base, variant in ((root, "kaggle"), (root / "MMAFEDB", "kaggle:MMAFEDB")):
            if (base / folder_name).is_dir():
                dropped: Counter = Counter()
                rows = scan_class_folders(base / folder_name, root, dropped)
                return make_samples(self, root, split, variant, rows, skip_bad=skip_bad, dropped=dropped)
        raise DatasetError(f"{root}: no MMA {split} folder; expected {folder_name}/ or MMAFEDB/{folder_name}/ "
                           "holding <angry|disgust|fear|happy|neutral|sad|surprise>/ image folders")
