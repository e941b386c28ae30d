"""The dataset-reader contract, its registry, and the parsing helpers the readers share.

A reader turns one dataset folder into `Samples` for one split. It validates the layout and
raises `DatasetError` naming the file (and line) and what it expected; it never downloads.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..core.errors import DatasetError
from ..core.labels import CLASSES, NO_FACE_NAMES, canonical_name
from ..core.registry import Registry
from .images import is_image_file
from .samples import MISSING_FILE, NO_FACE, NON_BASIC, SPLITS, Samples


class DatasetReader:
    """Base class of every dataset reader. Subclasses set the class attributes and `load`."""

    name: str = ""
    default_folder: str = ""  # folder name under --data-root
    description: str = ""
    splits: tuple[str, ...] = ("train", "test")
    options: dict[str, Any] = {}  # option name -> default, settable with --option key=value

    def load(self, root: Path, split: str, *, skip_bad: bool = False, **options: Any) -> Samples:
        raise NotImplementedError

    def has_split(self, root: Path | None, split: str, **options: Any) -> bool:
        """Whether `split` exists for the data at `root` (readers whose splits are optional on
        disk, like a folder without val/, say so here; by default: the reader's splits)."""
        return split in self.splits

    # -- helpers for subclasses -------------------------------------------------------------
    def check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; harness splits are {', '.join(SPLITS)}")
        if split not in self.splits:
            raise DatasetError(f"{self.name} has no {split!r} split (it has: {', '.join(self.splits)})")

    def resolve_options(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise DatasetError(f"{self.name}: unknown option(s) {', '.join(unknown)} (known: {known})")
        return {**self.options, **options}


DATASETS: Registry[DatasetReader] = Registry("dataset")


def register_dataset(cls: type[DatasetReader]) -> type[DatasetReader]:
    """Class decorator: register one instance of the reader under its `name`."""
    DATASETS.add(cls.name, cls())
    return cls


def require_dir(path: Path, expected: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: folder not found; expected {expected}")
    return path


def first_existing(candidates: Sequence[Path], expected: str) -> Path:
    """The first candidate that exists; else an error listing every place looked at."""
    for candidate in candidates:
        if candidate.exists():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise DatasetError(f"none of these exist: {looked}; expected {expected}")


@dataclass
class Row:
    """One candidate sample: where it came from (for error messages) and its label."""

    rel_path: str
    label: int
    origin: str  # "file:line" or a folder, named in errors


def check_files(
    root: Path, rows: Iterable[Row], *, skip_bad: bool, dropped: Counter
) -> tuple[list[str], list[int], list[int]]:
    """Keep the rows whose image exists: (ids, labels, file sizes).

    A missing image is an error naming the file and the label line that points at it, unless
    `skip_bad`, in which case it is dropped and counted.
    """
    ids: list[str] = []
    labels: list[int] = []
    sizes: list[int] = []
    for row in rows:
        try:
            size = os.stat(root / row.rel_path).st_size
        except FileNotFoundError:
            if not skip_bad:
                raise DatasetError(
                    f"{row.origin}: image {root / row.rel_path} does not exist "
                    "(use --skip-bad to drop such rows and count them)"
                ) from None
            dropped[MISSING_FILE] += 1
            continue
        ids.append(row.rel_path)
        labels.append(row.label)
        sizes.append(size)
    return ids, labels, sizes


def folder_label(folder: Path, code_table: dict[str, int | None] | None = None) -> int | None:
    """Canonical index of a class folder, by explicit code table or by class name.

    None means a non-basic class (dropped). A name nobody knows is an error naming the folder:
    the reader never falls back to folder order.
    """
    key = folder.name
    if code_table is not None and key in code_table:
        return code_table[key]
    try:
        name = canonical_name(key)
    except KeyError:
        accepted = sorted(code_table) if code_table else []
        hint = f" or one of {', '.join(accepted)}" if accepted else ""
        raise DatasetError(
            f"{folder}: class folder {key!r} is not an expression name "
            f"(expected one of {', '.join(CLASSES)}, a synonym{hint})"
        ) from None
    return None if name is None else CLASSES.index(name)


def scan_class_folders(
    split_dir: Path,
    root: Path,
    dropped: Counter,
    code_table: dict[str, int | None] | None = None,
) -> list[Row]:
    """Rows for a `split_dir/<class>/<image>` layout, sorted for a stable order."""
    rows: list[Row] = []
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{split_dir}: no class folders inside; expected {split_dir}/<class>/<image>")
    for class_dir in class_dirs:
        label = folder_label(class_dir, code_table)
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and is_image_file(p))
        if label is None:
            dropped[NO_FACE if class_dir.name.lower() in NO_FACE_NAMES else NON_BASIC] += len(files)
            continue
        rows.extend(Row(p.relative_to(root).as_posix(), label, str(class_dir)) for p in files)
    return rows


def read_label_text(path: Path) -> str:
    """A label file's text (UTF-8, with or without a byte-order mark); a file that is not UTF-8
    is refused naming the line and byte, instead of failing somewhere inside a parser."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: label file not found") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DatasetError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); "
                           "save the file as UTF-8") from None


def parse_path_label_lines(path: Path) -> Iterable[tuple[int, str, str]]:
    """Yield (line number, image path, label token) from a `<path> <label>` list file."""
    text = read_label_text(path)
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DatasetError(f"{path}:{lineno}: expected '<image path> <label>', got {stripped!r}")
        yield lineno, parts[0], parts[1]


def map_code(path: Path, lineno: int, token: str, table: dict[int, int | None]) -> int | None:
    """Map a native integer label through `table` (None = dropped); bad values name file:line."""
    try:
        code = int(token)
    except ValueError:
        raise DatasetError(f"{path}:{lineno}: label {token!r} is not an integer") from None
    if code not in table:
        valid = ", ".join(str(c) for c in sorted(table))
        raise DatasetError(f"{path}:{lineno}: label {code} is outside the code table ({valid})")
    return table[code]


def make_samples(
    reader: DatasetReader,
    root: Path,
    split: str,
    variant: str,
    rows: Iterable[Row],
    *,
    skip_bad: bool,
    dropped: Counter,
    warnings: list[str] | None = None,
) -> Samples:
    ids, labels, sizes = check_files(root, rows, skip_bad=skip_bad, dropped=dropped)
    if not ids:
        raise DatasetError(f"{root}: no {split} images found for {reader.name} ({variant} layout)")
    return Samples(
        dataset=reader.name,
        split=split,
        root=root,
        ids=ids,
        labels=np.asarray(labels, dtype=np.int64),
        variant=variant,
        dropped=dropped,
        file_sizes=np.asarray(sizes, dtype=np.int64),
        warnings=warnings or [],
    )


def expect_counts(samples: Samples, expected: dict[str, Sequence[int]]) -> None:
    """Warn (not fail) when a split's per-class counts differ from the official ones."""
    want = expected.get(samples.split)
    if want is None:
        return
    got = list(samples.class_counts().values())
    if got != list(want):
        samples.warnings.append(
            f"{samples.split} class counts {got} differ from the official {list(want)} "
            f"({sum(got)} vs {sum(want)} images)"
        )

