"""RAF-DB (basic): the official EmoLabel list, or the common re-packaged class folders."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..core.errors import DatasetError
from .base import (
    DatasetReader,
    Row,
    expect_counts,
    make_samples,
    map_code,
    parse_path_label_lines,
    register_dataset,
    scan_class_folders,
)
from .samples import Samples

# Native labels are 1-based in canonical order: canonical = native - 1.
NATIVE_TO_CANONICAL = {code: code - 1 for code in range(1, 8)}
LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"  # sic, "patition"
# Per-class counts of the official split, canonical order (spec/datasets.md).
OFFICIAL_COUNTS = {
    "train": (1290, 281, 717, 4772, 1982, 705, 2524),
    "test": (329, 74, 160, 1185, 478, 162, 680),
}


@register_dataset
class RafDb(DatasetReader):
    name = "rafdb"
    default_folder = "RAF-DB"
    description = "RAF-DB basic: basic/EmoLabel/list_patition_label.txt + Image/aligned, or train|test/<1..7|class>/"
    splits = ("train", "test")
    options = {"variant": "aligned"}  # or "original" (basic/Image/original/<name>)

    def load(self, root: Path, split: str, *, skip_bad: bool = False, **options: Any) -> Samples:
        self.check_split(split)
        opts = self.resolve_options(options)
        if opts["variant"] not in ("aligned", "original"):
            raise DatasetError(f"rafdb: option variant={opts['variant']!r}; expected 'aligned' or 'original'")
        root = Path(root)
        # The official zip unpacks to basic/; the authors' code calls it raf-basic/.
        for base in (root / "basic", root / "raf-basic", root):
            if (base / LABEL_FILE).is_file():
                samples = self._load_official(root, base, split, opts["variant"], skip_bad)
                break
        else:
            if (root / split).is_dir():
                dropped: Counter = Counter()
                rows = scan_class_folders(root / split, root, dropped, code_table={
                    str(code): canonical for code, canonical in NATIVE_TO_CANONICAL.items()
                })
                samples = make_samples(self, root, split, "class-folders", rows,
                                       skip_bad=skip_bad, dropped=dropped)
            else:
                raise DatasetError(
                    f"{root}: not a RAF-DB folder; expected basic/{LABEL_FILE.as_posix()} "
                    f"(official layout) or {split}/<1..7 or class name>/*.jpg (re-packaged)"
                )
        expect_counts(samples, OFFICIAL_COUNTS)
        return samples

    def _load_official(self, root: Path, base: Path, split: str, variant: str, skip_bad: bool) -> Samples:
        label_file = base / LABEL_FILE
        prefix = f"{split}_"
        image_dir = base / "Image" / variant
        rows: list[Row] = []
        for lineno, name, token in parse_path_label_lines(label_file):
            if not name.startswith(("train_", "test_")):
                raise DatasetError(f"{label_file}:{lineno}: image name {name!r} does not start with train_ or test_")
            if not name.startswith(prefix):
                continue
            label = map_code(label_file, lineno, token, NATIVE_TO_CANONICAL)
            file_name = f"{Path(name).stem}_aligned.jpg" if variant == "aligned" else name
            rel = (image_dir / file_name).relative_to(root).as_posix()
            rows.append(Row(rel, label, f"{label_file}:{lineno}"))
        return make_samples(self, root, split, f"official-{variant}", rows,
                            skip_bad=skip_bad, dropped=Counter())
