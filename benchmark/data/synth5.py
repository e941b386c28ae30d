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

import functools
import hashlib
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..core.errors import DatasetError
from ..core.labels import CLASSES
from ..core.paths import cache_dir
from .base import DATASETS, DatasetReader
from .samples import SPLITS, Samples
from .synthfaces import Identity, expression_params, face_layer, gauss, rotate_onto, sample_identity

GENERATOR_VERSION = 5  # bump when the drawing changes: old caches are then not reused
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
        row = np.arange(canvas)[:, None]
        grad = (top * (canvas - 1 - row) + bottom * row) // (canvas - 1)  # integers: exact everywhere
        return Image.fromarray(np.broadcast_to(grad[:, None, :], (canvas, canvas, 3)).astype(np.uint8))
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


# The look of a domain (grey, brightness, colour cast, side light) is applied in integers: each
# factor a whole number of thousandths, the product rounded once. A float32 dot product here (the
# greyscale conversion of generator version 4) went through OpenBLAS, whose kernel the machine's
# OPENBLAS_CORETYPE picks, and the kernels round differently: a pixel moved now and then.
PER_MILLE = 1000
LUMA = (299, 587, 114)  # ITU-R BT.601 in thousandths, as PIL's "L" conversion
CASTS = ((800, 1000, 1200), (1250, 1000, 700), (900, 1150, 850))


def _per_mille(rng: np.random.Generator, bounds: tuple[float, float]) -> int:
    """A factor drawn uniformly from `bounds`, in whole thousandths."""
    low, high = (int(round(b * PER_MILLE)) for b in bounds)
    return int(rng.integers(low, high, endpoint=True))


def _colour(rng: np.random.Generator, style: DomainStyle, img: Image.Image) -> np.ndarray:
    """Grey, brightness, colour cast and side light: (S, S, C) uint8 from integer arithmetic."""
    pixels = np.asarray(img, dtype=np.int64)
    scaled, scale = pixels, 1
    if style.grey:
        scaled = sum(w * pixels[..., c] for c, w in enumerate(LUMA))[..., None]
        scale *= PER_MILLE
    scaled = scaled * _per_mille(rng, style.brightness)
    scale *= PER_MILLE
    if style.colour_cast:
        scaled = scaled * np.array(CASTS[int(rng.integers(0, len(CASTS)))], dtype=np.int64)
        scale *= PER_MILLE
    if style.side_light:  # a ramp from 0.45 to 1.35 across the image, from either side
        column = np.arange(style.size)
        ramp = 450 + (900 * column + (style.size - 1) // 2) // (style.size - 1)
        scaled = scaled * (ramp if rng.random() < 0.5 else ramp[::-1])[None, :, None]
        scale *= PER_MILLE
    # At most 255·1000·1250·1350 < 2^63: no overflow. Rounds half up, once.
    return np.clip((scaled + scale // 2) // scale, 0, 255).astype(np.uint8)


def _noise(rng: np.random.Generator, style: DomainStyle, arr: np.ndarray) -> np.ndarray:
    """Additive sensor noise of std `style.noise`, rounded to whole grey levels (exact: gauss()
    uses + - * only, and rounding a float64 to an integer is exact)."""
    if not style.noise:
        return arr
    noise = np.rint(style.noise * gauss(rng, arr.shape)).astype(np.int64)
    return np.clip(arr.astype(np.int64) + noise, 0, 255).astype(np.uint8)


def _occlude(rng: np.random.Generator, style: DomainStyle, img: Image.Image) -> tuple[Image.Image, bool]:
    """The image with an occluder drawn on it (with probability `style.occluder_p`), and whether one was."""
    if style.occluder_p and rng.random() < style.occluder_p:
        d = ImageDraw.Draw(img)
        c = img.size[0]
        x, y = rng.uniform(0.2, 0.7, 2) * c
        r = rng.uniform(0.08, 0.16) * c
        d.ellipse([x, y, x + r * 1.3, y + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        return img, True
    return img, False


def _blur(rng: np.random.Generator, style: DomainStyle, img: Image.Image) -> Image.Image:
    if style.blur[1] > 0:
        return img.filter(ImageFilter.GaussianBlur(rng.uniform(*style.blur)))
    return img


# The stages of one image, in order; `generate_split(trace=...)` is shown each one's output.
STAGES = ("background", "face", "rotation", "occluder", "resize", "blur", "colour", "noise")
Trace = Callable[[int, str, Any], None]


def _render(rng: np.random.Generator, style: DomainStyle, identity: Identity, label: int,
            trace: Callable[[str, Any], None], attributes: dict[str, Any] | None = None) -> np.ndarray:
    """One image of the domain: the native-size uint8 array, (S, S) grey or (S, S, 3) colour.
    `attributes`, when given, receives what was drawn for it (pose, occluder); recording them
    takes no random draw, so the image is the same either way."""
    canvas = style.size * 2  # draw at twice the size, then downsample: anti-aliased strokes
    expr = expression_params(rng, CLASSES[label], rng.uniform(*style.intensity), jitter=1.0)
    pose = {"dx": rng.uniform(-style.shift, style.shift), "dy": rng.uniform(-style.shift, style.shift),
            "scale": rng.uniform(*style.scale), "angle": rng.uniform(-style.angle, style.angle),
            "yaw": rng.uniform(-style.yaw, style.yaw)}
    background = _background(rng, style, canvas)
    trace("background", background)
    layer, center = face_layer(canvas, identity, expr, pose)
    trace("face", layer)
    img = rotate_onto(layer, background, pose["angle"], center)
    trace("rotation", img)
    img, occluded = _occlude(rng, style, img)
    trace("occluder", img)
    if attributes is not None:
        attributes.update(yaw=pose["yaw"], angle=pose["angle"], occluded=occluded)
    img = img.resize((style.size, style.size), Image.BILINEAR)
    trace("resize", img)
    img = _blur(rng, style, img)
    trace("blur", img)
    arr = _colour(rng, style, img)
    trace("colour", arr)
    arr = _noise(rng, style, arr)
    trace("noise", arr)
    return arr[..., 0] if style.grey else arr


def generate_split(style: DomainStyle, split: str, seed: int, count: int, trace: Trace | None = None,
                   attributes: list[dict[str, Any]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, S, S) or (N, S, S, 3) uint8, labels (N,)) of one split, a function of the seed
    alone (the same bytes on every CPU). `trace(i, stage, image)` sees each stage of image i;
    `attributes`, when given, gets one dict per image of what the generator decided for it."""
    domain_index = list(DOMAINS).index(style.name)
    rng = np.random.default_rng([seed, domain_index, SPLIT_OFFSET[split], GENERATOR_VERSION])
    identities = [sample_identity(rng, **style.identity) for _ in range(IDENTITIES_PER_SPLIT)]
    true_labels = rng.choice(len(CLASSES), size=count, p=np.asarray(style.prior) / sum(style.prior))
    shape = (count, style.size, style.size) if style.grey else (count, style.size, style.size, 3)
    images = np.empty(shape, dtype=np.uint8)
    for i, label in enumerate(true_labels):
        which = int(rng.integers(0, len(identities)))
        identity = identities[which]
        drawn: dict[str, Any] | None = None if attributes is None else {
            "identity": which, "glasses": identity.glasses, "beard": identity.beard, "tone": identity.tone}
        images[i] = _render(rng, style, identity, int(label),
                            (lambda stage, image, i=i: trace(i, stage, image)) if trace else (lambda *_: None), drawn)
        if attributes is not None:
            attributes.append(drawn)
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


ATTRIBUTES = ("identity", "glasses", "beard", "tone", "yaw", "angle", "occluded")


def split_attributes(domain: str, split: str, seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    """What the generator decided for each image of one split (ATTRIBUTES: its identity and that
    identity's glasses, beard and skin tone, the head's yaw and in-plane angle, whether an
    occluder was drawn), one array per attribute in image order. Drawn again with the same seed
    and cached beside the domain's file; the domain's images and digest are unchanged."""
    path = domain_file(domain, seed, scale).with_name(f"{domain}.{split}-attributes.npz")
    if not path.is_file():
        style = DOMAINS[domain]
        count = max(len(CLASSES), int(round(style.counts[split] * scale)))
        drawn: list[dict[str, Any]] = []
        _, labels = generate_split(style, split, seed, count, attributes=drawn)
        with np.load(build_domain(domain, seed, scale)) as data:
            if not np.array_equal(labels, data[f"{split}_labels"]):  # the same draws, or nothing recorded
                raise DatasetError(f"synth5/{domain} {split}: attributes drawn again do not match the cached split")
        arrays = {name: np.asarray([d[name] for d in drawn]) for name in ATTRIBUTES}
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    with np.load(path) as data:
        return {name: data[name] for name in ATTRIBUTES}


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
                       dropped=Counter(), pixels=images, content_digest=domain_digest(self.style.name, seed, scale))


@functools.lru_cache(maxsize=None)
def _domain_sha256(domain: str, seed: int, scale: float) -> str:
    h = hashlib.sha256()
    with np.load(build_domain(domain, seed, scale)) as data:
        for key in sorted(data.files):
            h.update(data[key].tobytes())
    return h.hexdigest()


def domain_digest(domain: str, seed: int = 0, scale: float = 1.0) -> str:
    """Digest of one generated domain (all splits, images and labels), 16 hex digits: logged as
    the dataset's digest in MLflow's run inputs, the same on every machine."""
    return _domain_sha256(domain, seed, scale)[:16]


def synth5_digest(seed: int = 0, scale: float = 1.0) -> str:
    """Digest of all five generated domains (for tests and provenance)."""
    return hashlib.sha256("".join(_domain_sha256(d, seed, scale) for d in DOMAINS).encode()).hexdigest()


def stage_digests(count: int = 40, seed: int = 0, split: str = "train") -> dict[str, dict[str, str]]:
    """Domain -> stage -> 16 hex digits of that stage's outputs for the first `count` images of the
    split: where two machines' synth5 differ, the first stage whose digests differ is where."""
    out: dict[str, dict[str, str]] = {}
    for name, style in DOMAINS.items():
        hashes = {stage: hashlib.sha256() for stage in STAGES}

        def trace(i: int, stage: str, image: Any) -> None:
            if isinstance(image, Image.Image):
                head, body = f"{image.mode}{image.size}", image.tobytes()
            else:
                head, body = f"{image.dtype}{image.shape}", np.ascontiguousarray(image).tobytes()
            hashes[stage].update(head.encode() + body)

        generate_split(style, split, seed, count, trace=trace)
        out[name] = {stage: h.hexdigest()[:16] for stage, h in hashes.items()}
    return out


for _style in DOMAINS.values():
    DATASETS.add(f"synth5/{_style.name}", Synth5Domain(_style))
