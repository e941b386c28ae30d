"""Reading images as RGB uint8 and resizing them the way the paper's pipeline does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def to_pil_rgb(array: np.ndarray) -> Image.Image:
    """HxW (grey) or HxWx3 uint8 -> RGB PIL image (grey is replicated to 3 channels)."""
    img = Image.fromarray(np.asarray(array, dtype=np.uint8))
    return img.convert("RGB")


def read_rgb(path: Path) -> Image.Image:
    """Open an image file fully decoded as RGB; a corrupt or unknown file raises DatasetError."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable image ({exc})") from None


def resize_square(img: Image.Image, size: int) -> np.ndarray:
    """Resize to size x size, bilinear, aspect not kept (torchvision Resize((s, s)) on PIL)."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)
