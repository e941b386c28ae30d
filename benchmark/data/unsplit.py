"""Datasets without an official split (CK+, JAFFE, ExpW): test-only by default, or a seeded,
group-disjoint train/test split for training on them.

By default every kept sample is in `test` and there is no `train` (the CD-FER protocol tests on
them only). With the option `train_fraction` > 0, the samples are split by group (CK+ and JAFFE:
the subject, so no person is in both; ExpW: the source image, so faces of one photograph stay
together) with scikit-learn's GroupShuffleSplit seeded by `split_seed`: about that fraction of
the groups is `train`, the rest `test`. Both options change the samples, hence the fingerprint
and every job hash that reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.errors import DatasetError
from .base import DatasetReader

SPLIT_OPTIONS = {"train_fraction": 0.0, "split_seed": 0}


def number_option(reader: str, key: str, value: Any, kind: type, low: float, high: float) -> Any:
    """An option given in a protocol (typed) or with --option (text) as `kind`, within [low, high]."""
    text = str(value).strip()
    try:
        number = float(text) if kind is float else int(text)
    except ValueError:
        raise DatasetError(f"{reader}: option {key}={value!r}: expected {'an integer' if kind is int else 'a number'}") from None
    if not low <= number <= high:
        raise DatasetError(f"{reader}: option {key}={value!r}: must be in [{low}, {high}]")
    return number


class UnsplitReader(DatasetReader):
    """A reader whose dataset has no official split; subclasses list their own options too."""

    splits = ("train", "test")

    def split_options(self, options: dict[str, Any]) -> tuple[float, int]:
        fraction = number_option(self.name, "train_fraction", options["train_fraction"], float, 0.0, 0.95)
        seed = number_option(self.name, "split_seed", options["split_seed"], int, 0, 2**32 - 1)
        return fraction, seed

    def has_split(self, root: Path | None, split: str, **options: Any) -> bool:
        if split == "train":
            return self.split_options(self.resolve_options(options))[0] > 0
        return split == "test"

    def check_unsplit(self, split: str, fraction: float) -> None:
        self.check_split(split)
        if split == "train" and fraction == 0:
            raise DatasetError(f"{self.name} has no official train split: it is a test-only target by default; "
                               "to train on it, give a seeded split, e.g. --option train_fraction=0.8 "
                               "(dataset_options in a protocol), and split_seed")

    def split_variant(self, variant: str, fraction: float, seed: int) -> str:
        """The layout name `datasets check` prints, with the split options when they are used."""
        return f"{variant}:train_fraction={fraction}:split_seed={seed}" if fraction else variant

    def keep_split(self, split: str, groups: Sequence[str], fraction: float, seed: int) -> np.ndarray:
        """Indices of the samples in `split` (all of them, sorted, when there is no train split)."""
        n = len(groups)
        if fraction == 0:
            return np.arange(n)
        from sklearn.model_selection import GroupShuffleSplit

        if len(set(groups)) < 2:
            raise DatasetError(f"{self.name}: {len(set(groups))} group(s) cannot be split into train and test")
        train, test = next(GroupShuffleSplit(n_splits=1, train_size=fraction, random_state=seed)
                           .split(np.zeros(n), groups=list(groups)))
        return np.sort(train if split == "train" else test)
