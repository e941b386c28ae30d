"""Dataset readers, the decoded-image cache and synth5: files on disk in, labelled Samples and
decoded image arrays out. May import `benchmark.core` only.

Importing this package registers every built-in reader in `DATASETS`.
"""

from . import affectnet, ckplus, expw, fer2013, ferplus, imagefolder, jaffe, listfile, mma, rafdb, sfew, synth5  # noqa: F401  (registration)
from .base import DATASETS, DatasetReader, register_dataset
from .cache import DecodedSplit, decode_split
from .samples import SPLITS, Samples

__all__ = ["DATASETS", "DatasetReader", "DecodedSplit", "Samples", "SPLITS", "decode_split", "register_dataset"]
