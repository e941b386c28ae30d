"""Slices: named subsets or transforms of a dataset's test split (`rafdb:occlusion`,
`rafdb:gender=female`, `synth5/wild:occluded`, `ferplus:fog@3`), each evaluated like a target.
One family per file, registered in SLICE_FAMILIES (base.py states the contract)."""

from . import challenge, corruptions, rafdb_attributes, synth5_attributes  # noqa: F401  (registration)
from .base import SLICE_FAMILIES, SliceFamily, base_dataset, is_slice, load_slice, split_name

__all__ = ["SLICE_FAMILIES", "SliceFamily", "base_dataset", "is_slice", "load_slice", "split_name"]
