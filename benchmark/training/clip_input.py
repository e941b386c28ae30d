"""CLIP's own input policy, for the methods that adapt CLIP as its authors' code feeds it.

The harness's batches (training, augmented, and evaluation) are ImageNet-normalised at the
decoded cache's size, the policy CAFE's code uses. The CLIP adaptations (LP-FT on CLIP, WiSE-FT,
CLIP-Adapter, Tip-Adapter, CoOp) feed CLIP what OpenAI's `clip` preprocessing gives it: bicubic
resizing to the tower's input size and CLIP's own mean and std. `to_clip_input` maps a
harness batch to that (the ImageNet normalisation undone exactly, an antialiased bicubic resize
clamped to [0, 1] as a PIL resize is, CLIP's normalisation). Its name, `CLIP_POLICY`, is part of
the key of the frozen-feature cache, so CLIP-policy features never mix with the paper's.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .augment import IMAGENET_MEAN, IMAGENET_STD, channel_constants

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_POLICY = "resize-bicubic+clip-norm"


def to_clip_input(x: torch.Tensor, size: tuple[int, int] | int) -> torch.Tensor:
    """An ImageNet-normalised float batch (B, 3, H, W) as CLIP's preprocessing would give it at
    `size`: pixels back in [0, 1], bicubic resize (antialiased) when the size differs, CLIP
    normalisation."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    x = x * channel_constants(IMAGENET_STD, x) + channel_constants(IMAGENET_MEAN, x)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
    return (x - channel_constants(CLIP_MEAN, x)) / channel_constants(CLIP_STD, x)


def tower_size(clip_model) -> tuple[int, int]:
    """The input size of an open_clip model's image tower."""
    size = clip_model.visual.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def random_resized_crop(x: torch.Tensor, size: tuple[int, int], scale: tuple[float, float],
                        policy: str = "clip") -> torch.Tensor:
    """torchvision's RandomResizedCrop (ratio 3/4-4/3, bicubic, antialiased), one box per sample,
    drawn from torch's global generator as torchvision draws it, on an ImageNet-normalised batch;
    returned at `size` in CLIP's normalisation (the CLIP methods' training transform), or in the
    ImageNet one for `policy="paper"`."""
    from torchvision.transforms import RandomResizedCrop

    x = x * channel_constants(IMAGENET_STD, x) + channel_constants(IMAGENET_MEAN, x)
    out = []
    for image in x:
        top, left, height, width = RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3])
        crop = image[None, :, top:top + height, left:left + width]
        out.append(F.interpolate(crop, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1))
    x = torch.cat(out)
    if policy == "paper":
        return (x - channel_constants(IMAGENET_MEAN, x)) / channel_constants(IMAGENET_STD, x)
    return (x - channel_constants(CLIP_MEAN, x)) / channel_constants(CLIP_STD, x)
