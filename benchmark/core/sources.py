"""A job's source: one dataset (`rafdb`), or several trained on as one (`ferplus+affectnet+sfew+mma`).

Several datasets joined by `+` are a multi-source job: it trains on the union of their train
splits, each sample keeping its domain (the dataset it came from), and its unseen targets are the
datasets not in the set. Leave-one-domain-out is the protocol whose sources are, for each of its
datasets, the union of all the others (`leave_one_out = true`).
"""

from __future__ import annotations

SEP = "+"


def parts(source: str) -> list[str]:
    """The datasets a source trains on, in the order written."""
    return source.split(SEP)


def join(datasets: list[str]) -> str:
    return SEP.join(datasets)


def is_multi(source: str) -> bool:
    return SEP in source


def leave_one_out(datasets: list[str]) -> list[str]:
    """For each dataset, the source made of all the others (same order as `datasets`)."""
    return [join([d for d in datasets if d != held]) for held in datasets]


def seen(source: str, target: str) -> bool:
    """Whether `target` is one of the datasets the source trained on (its in-domain test set); a
    slice of a target (`synth5/wild:occluded`, benchmark.data.slices) as its dataset."""
    return target.partition(":")[0] in parts(source)


def held_out(source: str, datasets: list[str]) -> list[str]:
    """The datasets of `datasets` the source did not train on."""
    return [d for d in datasets if not seen(source, d)]


def seen_mask(frame) -> "np.ndarray":
    """Per row of a results frame (columns source, target): whether the target was trained on."""
    import numpy as np

    return np.array([seen(s, t) for s, t in zip(frame["source"], frame["target"])], dtype=bool)
