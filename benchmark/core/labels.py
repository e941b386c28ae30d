"""The canonical label space: seven basic expressions in RAF-DB order (spec/datasets.md).

Every reader maps its native labels into this order, by name or by an explicit table; nothing
ever relies on folder order.
"""

from __future__ import annotations

CLASSES: tuple[str, ...] = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
NUM_CLASSES = len(CLASSES)

# Folder and column names seen in the wild, lower-cased, to canonical names.
SYNONYMS: dict[str, str] = {
    "surprise": "surprise", "surprised": "surprise", "surprize": "surprise", "sur": "surprise",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear", "fea": "fear",
    "disgust": "disgust", "disgusted": "disgust", "dis": "disgust",
    "happiness": "happiness", "happy": "happiness", "joy": "happiness", "hap": "happiness",
    "sadness": "sadness", "sad": "sadness", "sadd": "sadness",
    "anger": "anger", "angry": "anger", "ang": "anger",
    "neutral": "neutral", "neutrality": "neutral", "calm": "neutral", "neu": "neutral",
}

# Classes outside the seven basic ones: dropped and counted, never an error.
NON_BASIC: frozenset[str] = frozenset(
    {"contempt", "contemptuous", "unknown", "none", "uncertain", "no-face", "noface", "no_face", "nf"}
)
NO_FACE_NAMES: frozenset[str] = frozenset({"no-face", "noface", "no_face", "nf"})


def canonical_name(name: str) -> str | None:
    """Canonical class name for a folder/column name; None for a non-basic class.

    Raises KeyError for a name that is neither, so the caller can say which file holds it.
    """
    key = name.strip().lower()
    if key in SYNONYMS:
        return SYNONYMS[key]
    if key in NON_BASIC:
        return None
    raise KeyError(name)


def class_index(name: str) -> int | None:
    canonical = canonical_name(name)
    return None if canonical is None else CLASSES.index(canonical)
