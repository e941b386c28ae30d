"""Helpers that write tiny real files for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, value: int = 128, size: tuple[int, int] = (12, 10), grey: bool = False) -> Path:
    """A small real image file (format from the suffix) whose pixels encode `value`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if grey else "RGB"
    array = np.full((size[1], size[0]) if grey else (size[1], size[0], 3), value, dtype=np.uint8)
    if not grey:
        array[..., 0] = 255 - value  # red != blue, so a BGR/RGB swap would show
    Image.fromarray(array, mode).save(path)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
