"""Common corruptions (Hendrycks & Dietterich, ICLR 2019): ImageNet-C's 15 corruptions at
severities 1-5, applied to any dataset's test split by the `imagecorruptions` package itself
(pinned; nothing re-implemented): `ferplus:fog@3`, `synth5/wild:gaussian_noise@5`.

Each image is corrupted after it is resized to the model's input size (ImageNet-C corrupts the
224 px image the network sees), with numpy's global generator seeded from the corruption and the
image's id, so two runs see the same pixels. The corrupted split is decoded once into the image
cache, keyed by corruption, severity and package version (the slice's fingerprint).

imagecorruptions 1.1.2 predates NumPy 2 and scikit-image 0.19: its `glass_blur` passes
`multichannel=True` (now `channel_axis=-1`), its `fog` names `np.float_` (now `np.float64`), and
its `impulse_noise` calls scikit-image's `random_noise`, which drew from numpy's global generator
then and from a fresh, unseeded one now (a different image every run). The first two renames are
bridged while it runs, and `random_noise` is handed a generator seeded from numpy's global one,
as it drew then; the package's arithmetic is its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from ...core.errors import DatasetError
from ..samples import Samples
from .base import SliceFamily, register_slice_family

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")  # imagecorruptions.get_corruption_names("common"), in its order
SEVERITIES = (1, 2, 3, 4, 5)
PACKAGE = "imagecorruptions"
_LOCK = threading.Lock()  # the package draws from numpy's global generator: one image at a time


def package_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        raise DatasetError(f"corruption slices need the {PACKAGE} package (pip install {PACKAGE}==1.1.2)") from None


def _corrupt_function():
    with warnings.catch_warnings():  # its pkg_resources import warns on every setuptools that still has it
        warnings.simplefilter("ignore")
        try:
            import imagecorruptions
            import imagecorruptions.corruptions as module
        except ImportError as exc:
            raise DatasetError(f"corruption slices: importing {PACKAGE} failed ({exc}); it needs "
                               "setuptools<81 (pkg_resources), scikit-image and OpenCV") from None
    if not getattr(module, "_channel_axis_bridged", False):
        skimage_gaussian = module.gaussian

        def gaussian(image, *args, multichannel=None, **kwargs):
            if multichannel is not None and "channel_axis" not in kwargs:
                kwargs["channel_axis"] = -1 if multichannel else None
            return skimage_gaussian(image, *args, **kwargs)

        module.gaussian = gaussian
        module._channel_axis_bridged = True
    return imagecorruptions.corrupt


@contextlib.contextmanager
def _bridged_apis():
    """While the package runs: `np.float_` for its fog (NumPy 2 removed the alias), and scikit-image's
    `random_noise` drawing from numpy's global generator, seeded per image (as it did in 2019)."""
    import skimage.util

    had = "float_" in np.__dict__
    if not had:
        np.float_ = np.float64
    random_noise = skimage.util.random_noise

    def seeded_random_noise(image, mode="gaussian", *args, rng=None, **kwargs):
        if rng is None:
            rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
        return random_noise(image, mode, *args, rng=rng, **kwargs)

    skimage.util.random_noise = seeded_random_noise
    try:
        yield
    finally:
        skimage.util.random_noise = random_noise
        if not had:
            del np.float_


@dataclass(frozen=True)
class Corruption:
    """One corruption at one severity: called on a (H, W, 3) uint8 image and the image's id."""

    name: str
    severity: int
    version: str

    @property
    def key(self) -> str:
        return f"{PACKAGE}=={self.version}:{self.name}@{self.severity}"

    def seed(self, sample_id: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{self.key}|{sample_id}".encode()).digest()[:4], "little")

    def __call__(self, image: np.ndarray, sample_id: str) -> np.ndarray:
        corrupt = _corrupt_function()
        with _LOCK, _bridged_apis(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = np.random.get_state()
            np.random.seed(self.seed(sample_id))
            try:
                out = corrupt(np.ascontiguousarray(image), corruption_name=self.name, severity=self.severity)
            finally:
                np.random.set_state(state)
        out = np.asarray(out)
        if out.shape != image.shape:
            raise DatasetError(f"{self.key}: returned an image of shape {out.shape} for {image.shape} ({sample_id})")
        return np.clip(out, 0, 255).astype(np.uint8)


def parse(slice_name: str) -> tuple[str, int] | None:
    name, sep, severity = slice_name.partition("@")
    if sep and name in CORRUPTIONS and severity.isdigit() and int(severity) in SEVERITIES:
        return name, int(severity)
    return None


@register_slice_family
class Corruptions(SliceFamily):
    name = "corruptions"
    description = "ImageNet-C's 15 corruptions x 5 severities (imagecorruptions), <corruption>@<1-5>"

    def offers(self, dataset: str, slice_name: str) -> bool:
        return parse(slice_name) is not None

    def names(self, dataset: str) -> list[str]:
        return [f"{c}@{s}" for c in CORRUPTIONS for s in SEVERITIES]

    def apply(self, samples: Samples, root: Path | None, slice_name: str) -> Samples:
        name, severity = parse(slice_name)
        import dataclasses

        return dataclasses.replace(samples, dataset=f"{samples.dataset}:{slice_name}", fingerprint="",
                                   content_digest="", transform=Corruption(name, severity, package_version()))
