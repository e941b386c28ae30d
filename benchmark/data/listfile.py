"""Generic `<path> <label>` list reader with a declared native label order.

    benchmark datasets check list --root DIR --option label_order=angry,disgust,fear,happy,neutral,sad,surprise

Integer labels index `label_order` (shifted by `label_base`); name labels go through the synonym
table. Paths are relative to the root.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..core.errors import DatasetError
from ..core.labels import CLASSES, canonical_name
from .base import DatasetReader, Row, make_samples, map_code, parse_path_label_lines, register_dataset
from .samples import NON_BASIC, Samples


def code_table(label_order: str, label_base: int) -> dict[int, int | None]:
    """Native integer code -> canonical index (None for non-basic names) from a name list."""
    table: dict[int, int | None] = {}
    for offset, name in enumerate(n for n in label_order.split(",") if n.strip()):
        try:
            canonical = canonical_name(name)
        except KeyError:
            raise DatasetError(f"list: label_order entry {name!r} is not an expression name "
                               f"(expected {', '.join(CLASSES)} or a synonym)") from None
        table[offset + label_base] = None if canonical is None else CLASSES.index(canonical)
    return table


@register_dataset
class ListFile(DatasetReader):
    name = "list"
    default_folder = ""
    description = "generic: <split>.txt lines '<path> <label>' with --option label_order=... (default canonical)"
    splits = ("train", "val", "test")
    options = {"label_order": ",".join(CLASSES), "label_base": 0,
               "train_file": "train.txt", "val_file": "val.txt", "test_file": "test.txt"}

    def has_split(self, root: Path | None, split: str, **options: Any) -> bool:
        if split not in self.splits or root is None:
            return False
        return (Path(root) / str(self.resolve_options(options)[f"{split}_file"])).is_file()

    def load(self, root: Path, split: str, *, skip_bad: bool = False, **options: Any) -> Samples:
        self.check_split(split)
        opts = self.resolve_options(options)
        root = Path(root)
        list_file = root / str(opts[f"{split}_file"])
        if not list_file.is_file():
            raise DatasetError(f"{list_file}: list file not found; expected lines '<path> <label>' "
                               f"(set another name with --option {split}_file=NAME)")
        try:
            base = int(opts["label_base"])
        except ValueError:
            raise DatasetError(f"list: option label_base={opts['label_base']!r} is not an integer") from None
        table = code_table(str(opts["label_order"]), base)
        dropped: Counter = Counter()
        rows: list[Row] = []
        for lineno, rel, token in parse_path_label_lines(list_file):
            if token.lstrip("-").isdigit():
                label = map_code(list_file, lineno, token, table)
            else:
                try:
                    name = canonical_name(token)
                except KeyError:
                    raise DatasetError(f"{list_file}:{lineno}: label {token!r} is neither a code of "
                                       "label_order nor an expression name") from None
                label = None if name is None else CLASSES.index(name)
            if label is None:
                dropped[NON_BASIC] += 1
                continue
            rows.append(Row(rel.replace("\\", "/"), label, f"{list_file}:{lineno}"))
        return make_samples(self, root, split, f"list:{list_file.name}", rows, skip_bad=skip_bad, dropped=dropped)
