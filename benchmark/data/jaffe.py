"""JAFFE: 213 posed images of 10 Japanese women, `jaffedbase/<poser>.<EXPR><n>.<id>.tiff`.

The expression code in the file name (AN, DI, FE, HA, NE, SA, SU) is the label, mapped by an
explicit table. No official split: test-only by default (see unsplit.py; groups are posers).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from ..core.errors import DatasetError
from ..core.labels import CLASSES
from .base import Row, make_samples, register_dataset
from .images import is_image_file
from .samples import Samples
from .unsplit import SPLIT_OPTIONS, UnsplitReader

CODES = {"AN": "anger", "DI": "disgust", "FE": "fear", "HA": "happiness", "NE": "neutral", "SA": "sadness",
         "SU": "surprise"}
NAME = re.compile(r"^(?P<poser>[A-Za-z]{2})\.(?P<code>[A-Za-z]{2})(?P<n>\d+)\.(?P<id>\d+)\.tiff?$", re.IGNORECASE)


@register_dataset
class Jaffe(UnsplitReader):
    name = "jaffe"
    default_folder = "JAFFE"
    description = "JAFFE: jaffedbase/<poser>.<AN|DI|FE|HA|NE|SA|SU><n>.<id>.tiff (test only unless train_fraction)"
    options = dict(SPLIT_OPTIONS)

    def load(self, root: Path, split: str, *, skip_bad: bool = False, **options: Any) -> Samples:
        fraction, seed = self.split_options(self.resolve_options(options))
        self.check_unsplit(split, fraction)
        root = Path(root)
        folder = next((f for f in (root / "jaffedbase", root / "jaffe", root) if f.is_dir()), None)
        if folder is None:
            raise DatasetError(f"{root}: folder not found; expected {root}/jaffedbase/<poser>.<EXPR><n>.<id>.tiff")
        rows: list[Row] = []
        posers: list[str] = []
        dropped: Counter = Counter()
        for path in sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p)):
            match = NAME.match(path.name)
            code = match["code"].upper() if match else None
            if code not in CODES:
                if skip_bad:
                    dropped["unparsable name"] += 1
                    continue
                raise DatasetError(f"{path}: not a JAFFE file name; expected <poser>.<EXPR><n>.<id>.tiff with EXPR "
                                   f"one of {', '.join(CODES)} (use --skip-bad to drop such files and count them)")
            rows.append(Row(path.relative_to(root).as_posix(), CLASSES.index(CODES[code]), str(path)))
            posers.append(match["poser"].upper())
        if not rows:
            raise DatasetError(f"{folder}: no JAFFE images (<poser>.<EXPR><n>.<id>.tiff) inside")
        keep = self.keep_split(split, posers, fraction, seed)
        variant = self.split_variant("jaffedbase", fraction, seed)
        return make_samples(self, root, split, variant, [rows[i] for i in keep], skip_bad=skip_bad, dropped=dropped)
