"""The paper's input pipeline, batched on tensors.

Per sample, the authors' code did: Gaussian noise (sigma^2 = 30) on the uint8 image with p=0.5,
resize to 224, ToTensor, ImageNet Normalize, RandomHorizontalFlip(0.5), RandomErasing(p=0.5,
scale=(0.02, 0.25), ratio=(0.3, 3.3), value=0) — so erased pixels equal the ImageNet mean colour.
Here the same distributions run on a whole batch at once (on the training device), drawing
every random number from one seeded generator, so a job is reproducible.

The authors add the noise before the resize, to the image at its stored size; the decoded-image
cache holds resized images, so the noise is drawn at each image's native size and resized with
it (see add_noise): the same distribution, up to where clipping at 0/255 happens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

# Bumped when the batched augmentation changes what it computes (it is part of every job's hash).
# 2: the Gaussian noise is drawn at each image's native size (it was drawn at the cache's size).
AUGMENT_VERSION = 2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NOISE_STD = math.sqrt(30.0)
ERASE_SCALE = (0.02, 0.25)
ERASE_RATIO = (0.3, 3.3)
ERASE_ATTEMPTS = 10  # torchvision's RandomErasing tries 10 boxes, then leaves the image alone


@dataclass(frozen=True)
class AugmentSpec:
    noise_p: float = 0.5
    flip_p: float = 0.5
    erase_p: float = 0.5
    # SCN and RUL: with probability `one_of_p` apply ONE of {flip, noise}, chosen uniformly,
    # instead of the independent noise and flip above.
    one_of_p: float = 0.0
    # OFER: with probability `affine_p`, torchvision's RandomRotation(affine_degrees) (nearest,
    # black fill) then RandomCrop(size, padding=affine_pad * size / 224) (a shift of up to that
    # many pixels each way, black fill), applied together as one resampling.
    affine_p: float = 0.0
    affine_degrees: float = 20.0
    affine_pad: int = 32


PAPER = AugmentSpec()


_NORM_CONSTANTS: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def channel_constants(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """(C, 1, 1) tensor of `values` on `like`'s device and dtype, each filled there from a Python
    scalar: no host-to-device copy, so even the first batch of a process does not wait for the
    GPU (a copy from a Python list did; the H100 check's sync test caught it)."""
    out = torch.empty(len(values), dtype=like.dtype, device=like.device)
    for channel, value in enumerate(values):
        out[channel].fill_(value)
    return out.view(-1, 1, 1)


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel of a float (B, 3, H, W) batch, as torchvision's Normalize
    computes it. The constants are made once per device: torchvision builds them from Python
    lists on every call, a blocking host-to-GPU copy (a host sync) each batch."""
    key = (x.device, x.dtype)
    if key not in _NORM_CONSTANTS:
        _NORM_CONSTANTS[key] = (channel_constants(IMAGENET_MEAN, x), channel_constants(IMAGENET_STD, x))
    mean, std = _NORM_CONSTANTS[key]
    return x.sub(mean).div_(std)


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float, ImageNet-normalised (the eval transform)."""
    return imagenet_normalize(images_uint8.permute(0, 3, 1, 2).float().div_(255.0))


def _rand(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=gen.device).to(device)


def add_noise(images: torch.Tensor, apply: torch.Tensor, gen: torch.Generator,
              native_hw: torch.Tensor | None = None) -> torch.Tensor:
    """uint8-valued float (B, 3, H, W): + N(0, 30) where `apply`, clipped and cast like uint8.

    The authors add the noise to the image at its stored (native) size, before the resize. The
    cache holds resized images and a bilinear resize is linear, so the equivalent is noise drawn
    at each image's native size and resized like the image (antialiased bilinear, as PIL) to
    H x W: a 48 px FERPlus face upsampled to 224 px gets smooth, weaker noise, not fresh
    per-pixel noise. `native_hw` (B, 2) holds the native sizes; None: the images are native.
    """
    b, c, h, w = images.shape
    if native_hw is None:
        noise = torch.randn(images.shape, generator=gen, device=gen.device).to(images.device)
    else:
        noise = torch.empty_like(images)
        sizes = [tuple(hw) for hw in native_hw.tolist()]
        for nh, nw in sorted(set(sizes)):  # one draw per distinct native size, in a fixed order
            rows = torch.tensor([k for k, hw in enumerate(sizes) if hw == (nh, nw)]).to(images.device,
                                                                                         non_blocking=True)
            raw = torch.randn((len(rows), c, nh, nw), generator=gen, device=gen.device).to(images.device)
            if (nh, nw) != (h, w):
                raw = F.interpolate(raw, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
            noise[rows] = raw
    noisy = (images + noise * NOISE_STD).clamp_(0, 255).floor_()  # np.clip(...).astype(uint8) truncates
    return torch.where(apply[:, None, None, None], noisy, images)


def rotate_and_shift(x: torch.Tensor, apply: torch.Tensor, gen: torch.Generator, degrees: float,
                     pad: int) -> torch.Tensor:
    """Where `apply`: the image rotated by an angle uniform in [-degrees, degrees] about its
    centre, then shifted by integers uniform in [-pad, pad] on each axis (a RandomCrop of the same
    size from the image padded by `pad`), both nearest-neighbour with zeros outside, in one
    grid_sample. torchvision draws the angle, then the crop's top-left corner; so here."""
    b, _, h, w = x.shape
    angle = torch.deg2rad((_rand((b,), gen, x.device) * 2 - 1) * degrees)
    dy = torch.floor(_rand((b,), gen, x.device) * (2 * pad + 1)) - pad
    dx = torch.floor(_rand((b,), gen, x.device) * (2 * pad + 1)) - pad
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output pixel p reads the rotated image at p + d; the rotated image at q reads the input at
    # R(-angle)(q - centre) + centre. In grid_sample's normalised coordinates (x right, y down):
    tx, ty = 2 * dx / w, 2 * dy / h
    theta = torch.stack([torch.stack([cos, -sin, cos * tx - sin * ty], 1),
                         torch.stack([sin, cos, sin * tx + cos * ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    warped = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    # What the rotation moved out of the frame is gone before the crop shifts it back: black.
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    inside = (((ys[None, :] + dy[:, None]) >= 0) & ((ys[None, :] + dy[:, None]) < h))[:, :, None] \
        & (((xs[None, :] + dx[:, None]) >= 0) & ((xs[None, :] + dx[:, None]) < w))[:, None, :]
    warped = warped * inside[:, None].to(x.dtype)
    return torch.where(apply[:, None, None, None], warped, x)


def random_erase(x: torch.Tensor, apply: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """torchvision RandomErasing(scale, ratio, value=0) per sample, vectorised over the batch."""
    b, _, h, w = x.shape
    area = h * w
    scale = _rand((b, ERASE_ATTEMPTS), gen, x.device) * (ERASE_SCALE[1] - ERASE_SCALE[0]) + ERASE_SCALE[0]
    log_lo, log_hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    ratio = torch.exp(_rand((b, ERASE_ATTEMPTS), gen, x.device) * (log_hi - log_lo) + log_lo)
    eh = torch.round(torch.sqrt(area * scale * ratio)).long()
    ew = torch.round(torch.sqrt(area * scale / ratio)).long()
    valid = (eh < h) & (ew < w)
    has_box = valid.any(dim=1) & apply
    first = valid.float().argmax(dim=1)  # first attempt that fits
    rows = torch.arange(b, device=x.device)
    eh, ew = eh[rows, first], ew[rows, first]
    top = (_rand((b,), gen, x.device) * (h - eh + 1).float()).long()
    left = (_rand((b,), gen, x.device) * (w - ew + 1).float()).long()
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    box = ((ys >= top[:, None, None]) & (ys < (top + eh)[:, None, None])
           & (xs >= left[:, None, None]) & (xs < (left + ew)[:, None, None]) & has_box[:, None, None])
    return x.masked_fill(box[:, None], 0.0)


def augment(images_uint8: torch.Tensor, spec: AugmentSpec, gen: torch.Generator,
            return_flips: bool = False, native_hw: torch.Tensor | None = None,
            ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W, 3) uint8 on the device -> augmented, normalised (B, 3, H, W) float.

    `native_hw` (B, 2): each image's size before the cache resized it (see add_noise). With
    `return_flips`, also the (B,) bool mask of the samples that were flipped.
    """
    b = images_uint8.shape[0]
    device = images_uint8.device
    x = images_uint8.permute(0, 3, 1, 2).float()
    if spec.one_of_p > 0:
        chosen = _rand((b,), gen, device) < spec.one_of_p
        pick_flip = _rand((b,), gen, device) < 0.5
        noise_mask, flip_mask = chosen & ~pick_flip, chosen & pick_flip
    else:
        noise_mask = _rand((b,), gen, device) < spec.noise_p
        flip_mask = _rand((b,), gen, device) < spec.flip_p
    # Skipping the noise draw when no sample takes it saves work but asks the host; on CUDA that
    # question would stall the GPU every batch, so there the noise is always drawn (and applied
    # only where selected: the same distribution; the generator then runs on in another order).
    if device.type == "cuda" or noise_mask.any():
        x = add_noise(x, noise_mask, gen, native_hw)
    if spec.affine_p > 0:  # before normalising: the fill is black, as torchvision's on the PIL image
        pad = round(spec.affine_pad * x.shape[-1] / 224)
        x = rotate_and_shift(x, _rand((b,), gen, device) < spec.affine_p, gen, spec.affine_degrees, pad)
    x = imagenet_normalize(x.div_(255.0))
    # The flip comes after the rotation here and before it in torchvision: the angle and shift
    # are symmetric, so the distribution of augmented images is the same.
    x = torch.where(flip_mask[:, None, None, None], x.flip(-1), x)
    if spec.erase_p > 0:
        x = random_erase(x, _rand((b,), gen, device) < spec.erase_p, gen)
    return (x, flip_mask) if return_flips else x
