"""The slice contract: a family of slices turns a dataset's parsed split into the slice's.

A slice is named `<dataset>:<slice>`. A family says which slices it offers for a dataset and
makes one from the dataset's Samples: a subset of its rows (`subset`, the images a released
list or an attribute names) or the same rows with a pixel transform (a corruption). The slice's
Samples carry the slice's name as their dataset, so its decoded images, fingerprints and
results are its own.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from ...core.errors import DatasetError
from ...core.registry import Registry
from ..samples import Samples


class SliceFamily:
    """One kind of slice. Subclasses set `name`, `description` and implement the three methods."""

    name: str = ""
    description: str = ""

    def offers(self, dataset: str, slice_name: str) -> bool:
        """Whether this family makes `slice_name` for `dataset` (the name alone decides)."""
        raise NotImplementedError

    def names(self, dataset: str) -> list[str]:
        """The slices it offers for `dataset`, for listing (a family with open-ended names, like
        corruption severities, lists them all)."""
        raise NotImplementedError

    def apply(self, samples: Samples, root: Path | None, slice_name: str) -> Samples:
        """The slice of `samples` (the dataset's split as read from `root`)."""
        raise NotImplementedError

    def missing(self, samples: Samples, root: Path | None, slice_name: str) -> list[str]:
        """Entries of the slice's source (a released list) that name no image of the split, each
        with its file and line; families without such a source have none."""
        return []


SLICE_FAMILIES: Registry[SliceFamily] = Registry("slice family")


def register_slice_family(cls: type[SliceFamily]) -> type[SliceFamily]:
    """Class decorator: register one instance of the family under its `name`."""
    SLICE_FAMILIES.add(cls.name, cls())
    return cls


def split_name(name: str) -> tuple[str, str | None]:
    """`rafdb:occlusion` -> ("rafdb", "occlusion"); a plain dataset name -> (name, None)."""
    dataset, sep, slice_name = name.partition(":")
    return (dataset, slice_name) if sep else (name, None)


def is_slice(name: str) -> bool:
    return split_name(name)[1] is not None


def base_dataset(name: str) -> str:
    """The dataset a slice is cut from (the name itself for a dataset)."""
    return split_name(name)[0]


def family_of(name: str) -> SliceFamily:
    dataset, slice_name = split_name(name)
    if not slice_name:
        raise DatasetError(f"{name!r}: a slice is named <dataset>:<slice>")
    found = [f for f in (SLICE_FAMILIES.get(n) for n in SLICE_FAMILIES.names()) if f.offers(dataset, slice_name)]
    if not found:
        offered = sorted({s for n in SLICE_FAMILIES.names() for s in SLICE_FAMILIES.get(n).names(dataset)})
        shown = [s for s in offered if "@" not in s] + (["<corruption>@<1-5>"] if any("@" in s for s in offered) else [])
        raise DatasetError(f"unknown slice {name!r}; {dataset} offers: {', '.join(shown) or 'none'} "
                           "(benchmark datasets slices lists them)")
    return found[0]


def load_slice(name: str, samples: Samples, root: Path | None) -> Samples:
    """The slice `name` of `samples` (its dataset's split, read from `root`)."""
    return family_of(name).apply(samples, root, split_name(name)[1])


def subset(samples: Samples, rows: np.ndarray, slice_name: str) -> Samples:
    """The rows `rows` of `samples` as the slice `<dataset>:<slice_name>`, in the split's order."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    return dataclasses.replace(
        samples, dataset=f"{samples.dataset}:{slice_name}", ids=[samples.ids[i] for i in rows],
        labels=samples.labels[rows], pixels=None if samples.pixels is None else samples.pixels[rows],
        file_sizes=None if samples.file_sizes is None else samples.file_sizes[rows],
        boxes=None if samples.boxes is None else samples.boxes[rows], fingerprint="", content_digest="")


def image_key(name: str) -> str:
    """What names one image across layouts and lists: the file's stem without RAF-DB's
    `_aligned`, and a FER2013 pixel row (`fer2013.csv#32222`) as FERPlus names it (`fer0032222`);
    RAN's FERPlus lists prefix a class (`1_fer0034656.png`), which is dropped."""
    path, _, row = name.partition("#")
    if row.isdigit() and path.lower().endswith(".csv"):
        return f"fer{int(row):07d}"
    stem = Path(path.replace("\\", "/")).stem
    stem = re.sub(r"^\d+_(?=fer\d+$)", "", stem)
    return stem[: -len("_aligned")] if stem.endswith("_aligned") else stem
