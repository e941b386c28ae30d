"""synth5: five procedurally generated facial-expression domains, the embedded default.

Each domain imitates one trait of the paper's five datasets, so a model trained on one of them
meets a real domain shift on the others:

    studio   RAF-DB-like: colour 100 px aligned faces, plain backgrounds, happy-heavy
    webcam   FERPlus-like: 48 px greyscale, sensor noise, neutral-heavy, some label noise
    wild     AffectNet-like: colour, cluttered backgrounds, large pose, occluders, noisy labels
    film     SFEW-like: dark film frames, colour cast, blur, grain, a small train set
    lowres   MMA-like: 48 px greyscale, other identities (round faces, glasses, beards),
             side lighting

Built offline, deterministic from a seed (same seed -> identical bytes), cached as one .npz per
domain under the cache folder. Registered as `synth5/<domain>` so every command treats the
domains like the real datasets.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..core.errors import DatasetError
from ..core.labels import CLASSES
from ..core.paths import cache_dir
from .base import DATASETS, DatasetReader
from .samples import SPLITS, Samples
from .synthfaces import draw_face, expression_params, sample_identity

GENERATOR_VERSION = 4  # bump when the drawing changes: old caches are then not reused
IDENTITIES_PER_SPLIT = 60
SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class DomainStyle:
    name: str
    description: str
    size: int  # native side in pixels
    counts: dict[str, int]  # images per split at scale 1
    prior: tuple[float, ...]  # class prior, canonical order
    label_noise: float = 0.0  # fraction of labels replaced by another class
    grey: bool = False
    background: str = "plain"  # plain | gradient | clutter | dark
    shift: float = 0.02
    scale: tuple[float, float] = (0.95, 1.05)
    angle: float = 4.0
    yaw: float = 0.05
    intensity: tuple[float, float] = (0.7, 1.0)
    brightness: tuple[float, float] = (0.95, 1.05)
    colour_cast: bool = False
    blur: tuple[float, float] = (0.0, 0.0)  # Gaussian radius at native size
    noise: float = 0.0  # std of additive pixel noise
    side_light: bool = False
    occluder_p: float = 0.0
    identity: dict[str, Any] = field(default_factory=dict)


STANDARD = {"train": 1200, "val": 200, "test": 500}
DOMAINS: dict[str, DomainStyle] = {d.name: d for d in (
    DomainStyle("studio", "RAF-DB-like: colour 100 px aligned faces, plain backgrounds, happy-heavy",
                size=100, counts=STANDARD, prior=(0.105, 0.023, 0.058, 0.389, 0.162, 0.057, 0.206)),
    DomainStyle("webcam", "FERPlus-like: 48 px greyscale webcam faces, sensor noise, 3% label noise",
                size=48, counts=STANDARD, prior=(0.12, 0.03, 0.02, 0.27, 0.12, 0.09, 0.35),
                label_noise=0.03, grey=True, background="gradient", shift=0.05, scale=(0.85, 1.1),
                angle=10, yaw=0.2, brightness=(0.75, 1.25), noise=7.0),
    DomainStyle("wild", "AffectNet-like: colour in-the-wild, clutter, pose, occluders, 6% label noise",
                size=112, counts={"train": 2400, "val": 200, "test": 500},
                prior=(0.14, 0.13, 0.13, 0.17, 0.14, 0.15, 0.14), label_noise=0.06, background="clutter",
                shift=0.07, scale=(0.8, 1.1), angle=15, yaw=0.5, intensity=(0.65, 1.0), brightness=(0.75, 1.25),
                occluder_p=0.15),
    DomainStyle("film", "SFEW-like: dark film frames, colour cast, blur, grain, small train set",
                size=96, counts={"train": 600, "val": 100, "test": 300},
                prior=(0.09, 0.12, 0.07, 0.19, 0.16, 0.18, 0.19), label_noise=0.05,
                background="dark", shift=0.07, scale=(0.75, 1.05), angle=15, yaw=0.5,
                brightness=(0.45, 0.75), colour_cast=True, blur=(0.3, 0.8), noise=5.0),
    DomainStyle("lowres", "MMA-like: 48 px greyscale, other identities (round, glasses, beards), side light",
                size=48, counts=STANDARD, prior=(0.10, 0.04, 0.02, 0.29, 0.14, 0.09, 0.32),
                label_noise=0.03, grey=True, background="gradient", shift=0.04, scale=(0.85, 1.05),
                angle=8, yaw=0.3, brightness=(0.8, 1.2), side_light=True, noise=3.0,
                identity={"round_faces": True, "glasses_p": 0.35, "beard_p": 0.3}),
)}


def _background(rng: np.random.Generator, style: DomainStyle, canvas: int) -> Image.Image:
    if style.background == "plain":
        base = rng.integers(190, 245, 3)
        return Image.new("RGB", (canvas, canvas), tuple(int(c) for c in base))
    if style.background == "gradient":
        top, bottom = rng.integers(60, 230, 3), rng.integers(60, 230, 3)
        t = np.linspace(0, 1, canvas)[:, None, None]
        grad = (top * (1 - t) + bottom * t) * np.ones((1, canvas, 1))
        return Image.fromarray(grad.astype(np.uint8))
    img = Image.new("RGB", (canvas, canvas), tuple(int(c) for c in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(img)
    shapes = int(rng.integers(6, 16)) if style.background == "clutter" else int(rng.integers(2, 6))
    hi = 255 if style.background == "clutter" else 110
    for _ in range(shapes):
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * canvas
        w, h = rng.uniform(0.05, 0.6, 2) * canvas
        colour = tuple(int(c) for c in rng.integers(0, hi, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            d.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        elif kind == 1:
            d.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            d.line([x0, y0, x0 + w, y0 + h], fill=colour, width=int(rng.integers(1, 6)))
    if style.background == "dark":
        img = img.filter(ImageFilter.GaussianBlur(canvas / 20))
    return img


def _finish(rng: np.random.Generator, style: DomainStyle, img: Image.Image) -> np.ndarray:
    """Domain look applied to a rendered canvas; returns the native-size uint8 array."""
    if style.occluder_p and rng.random() < style.occluder_p:
        d = ImageDraw.Draw(img)
        c = img.size[0]
        x, y = rng.uniform(0.2, 0.7, 2) * c
        r = rng.uniform(0.08, 0.16) * c
        d.ellipse([x, y, x + r * 1.3, y + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    img = img.resize((style.size, style.size), Image.BILINEAR)
    if style.blur[1] > 0:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(*style.blur)))
    arr = np.asarray(img, dtype=np.float32)
    if style.grey:
        arr = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        arr = arr[..., None]
    arr = arr * rng.uniform(*style.brightness)
    if style.colour_cast:
        casts = np.array([[0.8, 1.0, 1.2], [1.25, 1.0, 0.7], [0.9, 1.15, 0.85]], dtype=np.float32)
        arr = arr * casts[rng.integers(0, len(casts))]
    if style.side_light:
        ramp = np.linspace(0.45, 1.35, style.size, dtype=np.float32)
        arr = arr * (ramp if rng.random() < 0.5 else ramp[::-1])[None, :, None]
    if style.noise:
        arr = arr + rng.normal(0.0, style.noise, arr.shape).astype(np.float32)
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr[..., 0] if style.grey else arr


def generate_split(style: DomainStyle, split: str, seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, S, S) or (N, S, S, 3) uint8, labels (N,)) of one split, deterministic in seed."""
    domain_index = list(DOMAINS).index(style.name)
    rng = np.random.default_rng([seed, domain_index, SPLIT_OFFSET[split], GENERATOR_VERSION])
    identities = [sample_identity(rng, **style.identity) for _ in range(IDENTITIES_PER_SPLIT)]
    true_labels = rng.choice(len(CLASSES), size=count, p=np.asarray(style.prior) / sum(style.prior))
    canvas = style.size * 2  # draw at twice the size, then downsample: anti-aliased strokes
    shape = (count, style.size, style.size) if style.grey else (count, style.size, style.size, 3)
    images = np.empty(shape, dtype=np.uint8)
    for i, label in enumerate(true_labels):
        identity = identities[int(rng.integers(0, len(identities)))]
        expr = expression_params(rng, CLASSES[label], rng.uniform(*style.intensity), jitter=1.0)
        pose = {"dx": rng.uniform(-style.shift, style.shift), "dy": rng.uniform(-style.shift, style.shift),
                "scale": rng.uniform(*style.scale), "angle": rng.uniform(-style.angle, style.angle),
                "yaw": rng.uniform(-style.yaw, style.yaw)}
        img = draw_face(canvas, identity, expr, _background(rng, style, canvas), pose)
        images[i] = _finish(rng, style, img)
    labels = true_labels.copy()
    noisy = rng.random(count) < style.label_noise
    labels[noisy] = (labels[noisy] + rng.integers(1, len(CLASSES), int(noisy.sum()))) % len(CLASSES)
    return images, labels.astype(np.int64)


def domain_file(domain: str, seed: int, scale: float, root: Path | None = None) -> Path:
    base = Path(root) if root is not None else cache_dir()
    return base / "synth5" / f"v{GENERATOR_VERSION}-seed{seed}-scale{scale:g}" / f"{domain}.npz"


def build_domain(domain: str, seed: int = 0, scale: float = 1.0, root: Path | None = None) -> Path:
    """Generate every split of one domain into its cache file (atomically) unless it exists."""
    path = domain_file(domain, seed, scale, root)
    if path.is_file():
        return path
    style = DOMAINS[domain]
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        count = max(len(CLASSES), int(round(style.counts[split] * scale)))
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = generate_split(style, split, seed, count)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class Synth5Domain(DatasetReader):
    """Reader of one synth5 domain; the data root is not used (the cache folder is)."""

    default_folder = ""
    splits = SPLITS
    options = {"seed": 0, "scale": 1.0}

    def __init__(self, style: DomainStyle):
        self.style = style
        self.name = f"synth5/{style.name}"
        self.description = f"synth5 {style.name}: {style.description}"

    def load(self, root: Path | None, split: str, *, skip_bad: bool = False, **options: Any) -> Samples:
        self.check_split(split)
        opts = self.resolve_options(options)
        try:
            seed, scale = int(opts["seed"]), float(opts["scale"])
        except ValueError:
            raise DatasetError(f"{self.name}: options seed and scale must be numbers, got {opts}") from None
        path = build_domain(self.style.name, seed, scale)
        try:
            with np.load(path) as data:
                images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        except (OSError, KeyError, ValueError) as exc:
            path.unlink(missing_ok=True)  # a damaged cache file is rebuilt on the next load
            raise DatasetError(f"{path}: damaged synth5 cache ({exc}); removed it, run again to rebuild") from None
        ids = [f"{split}#{i}" for i in range(len(labels))]
        return Samples(self.name, split, path.parent, ids, labels, f"generated:seed{seed}:scale{scale:g}",
                       dropped=Counter(), pixels=images)


def synth5_digest(seed: int = 0, scale: float = 1.0) -> str:
    """Digest of all five generated domains (for tests and provenance)."""
    h = hashlib.sha256()
    for domain in DOMAINS:
        with np.load(build_domain(domain, seed, scale)) as data:
            for key in sorted(data.files):
                h.update(data[key].tobytes())
    return h.hexdigest()


for _style in DOMAINS.values():
    DATASETS.add(f"synth5/{_style.name}", Synth5Domain(_style))
