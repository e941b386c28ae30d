"""SFEW 2.0: Train/ and Val/ class folders (Val is the benchmark's test split)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..core.errors import DatasetError
from .base import DatasetReader, make_samples, register_dataset, scan_class_folders
from .samples import Samples

# Official Test labels are not public, so the benchmark tests on Val.
SPLIT_FOLDER = {"train": "Train", "test": "Val"}
# Aligned-face variants are preferred when present, in this order.
ALIGNED_SUFFIXES = ("_Aligned_Faces", "_Aligned", "_aligned_faces", "_aligned")


@register_dataset
class Sfew(DatasetReader):
    name = "sfew"
    default_folder = "SFEW2.0"
    description = "SFEW 2.0: Train/<Angry..Surprise>/ and Val/ (Val = test split); *_Aligned_Faces/ preferred"
    splits = ("train", "test")
    options = {"variant": "auto"}  # auto (aligned when present), aligned, or original

    def load(self, root: Path, split: str, *, skip_bad: bool = False, **options: Any) -> Samples:
        self.check_split(split)
        variant = self.resolve_options(options)["variant"]
        if variant not in ("auto", "aligned", "original"):
            raise DatasetError(f"sfew: option variant={variant!r}; expected auto, aligned or original")
        root = Path(root)
        base = SPLIT_FOLDER[split]
        aligned = [root / f"{base}{suffix}" for suffix in ALIGNED_SUFFIXES]
        original = [root / base, root / base.lower()]
        candidates = {"auto": aligned + original, "aligned": aligned, "original": original}[variant]
        folder = next((c for c in candidates if c.is_dir()), None)
        if folder is None:
            looked = ", ".join(c.name + "/" for c in candidates)
            raise DatasetError(f"{root}: no SFEW {split} folder; looked for {looked} each holding "
                               "<Angry|Disgust|Fear|Happy|Neutral|Sad|Surprise>/ image folders")
        chosen = "aligned" if folder in aligned else "original"
        dropped: Counter = Counter()
        rows = scan_class_folders(folder, root, dropped)
        return make_samples(self, root, split, f"{chosen}:{folder.name}", rows, skip_bad=skip_bad, dropped=dropped)
