"""Generic `root/<split>/<class name>/*` reader for any data laid out by class name."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..core.errors import DatasetError
from .base import DatasetReader, make_samples, register_dataset, scan_class_folders
from .samples import Samples

SPLIT_FOLDERS = {"train": ("train", "Train", "training"),
                 "val": ("val", "valid", "validation", "Val", "Valid"),
                 "test": ("test", "Test", "testing")}


@register_dataset
class ImageFolder(DatasetReader):
    name = "imagefolder"
    default_folder = ""  # always given with --root or --dataset-path
    description = "generic: root/<train|val|test>/<class name>/* (names matched through the synonym table)"
    splits = ("train", "val", "test")

    def has_split(self, root: Path | None, split: str, **options: Any) -> bool:
        return split in SPLIT_FOLDERS and root is not None and any((Path(root) / f).is_dir()
                                                                   for f in SPLIT_FOLDERS[split])

    def load(self, root: Path, split: str, *, skip_bad: bool = False, **options: Any) -> Samples:
        self.check_split(split)
        self.resolve_options(options)
        root = Path(root)
        folder = next((root / f for f in SPLIT_FOLDERS[split] if (root / f).is_dir()), None)
        if folder is None:
            raise DatasetError(f"{root}: no {split} folder; expected one of "
                               f"{', '.join(SPLIT_FOLDERS[split])} holding <class name>/ folders")
        dropped: Counter = Counter()
        rows = scan_class_folders(folder, root, dropped)
        return make_samples(self, root, split, f"imagefolder:{folder.name}", rows, skip_bad=skip_bad, dropped=dropped)
