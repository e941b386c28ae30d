"""The backbone contract: what every trainable backbone gives a method, whatever library holds it.

A trainable backbone comes from one of the families (benchmark.models.backbones lists them).
Every one gives `feature_map(x)` (B, C, h, w) and `Backbone(x)`, the pooled feature (B, C),
with `dim` = C. What the map and the pool are, per family:

    torchvision   the last feature map; its global average (the paper's GAP feature)
    timm CNNs     forward_features (the last map, NCHW); timm's pre-logits feature
                  (model(x) with the classifier removed), the map's global average for
                  ResNets, EfficientNets, MobileNets; ConvNeXt normalises after pooling
    timm ViTs     the patch tokens after the final norm, on their grid (class and register
                  tokens left out); timm's pre-logits feature with average pooling of the patch
                  tokens (global_pool 'avg', the final norm applied per token before it): the
                  map's mean
    open_clip     the projected patch tokens after ln_post, on their grid; encode_image with
                  the tower's pool_type 'avg' (the mean of the patch tokens, then the
                  projection): the map's mean

Methods that read the map (EAC's class activation maps, RUL's heads, OFER's attention) see the
same map whatever the family; EAC pools it itself, so its logits are always those of the map's
average. A model with a fixed input size (a ViT's positional grid, CLIP's 224 px) gets its input
resized to that size (bilinear) inside the backbone.
"""

from __future__ import annotations

import difflib
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import BenchmarkError
from .specs import BackboneSpec


class Backbone(nn.Module):
    """A trainable network cut before its classifier (see the module docstring)."""

    def __init__(self, dim: int, spec: BackboneSpec, weights_digest: str, input_size: int | None = None):
        super().__init__()
        self.dim = dim
        self.spec = spec
        self.weights_digest = weights_digest
        self.input_size = input_size  # the one side the model takes, or None for any

    def fit_input(self, x: torch.Tensor) -> torch.Tensor:
        """`x` resized to the model's input size, where it has one."""
        if self.input_size is None or tuple(x.shape[-2:]) == (self.input_size, self.input_size):
            return x
        return F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def set_grad_checkpointing(self) -> None:
        """Recompute activations in the backward pass instead of keeping them (recipe.grad_checkpointing)."""
        raise BenchmarkError(f"backbone {self.spec.id}: recipe.grad_checkpointing is offered by the timm and "
                             "open_clip backbones only")

    def stage_modules(self) -> list[nn.Module]:
        """The modules whose outputs end the network's stages after the stem, in order (stride 4,
        8, 16, 32): where feature-statistics recipes (MixStyle) act. CNNs only."""
        raise BenchmarkError(f"backbone {self.spec.id}: a transformer has token sequences, not CNN stages "
                             "with per-channel spatial statistics")

    def gradcam_layer(self) -> nn.Module:
        """The module whose activations and gradients GradCAM weighs (`benchmark explain`)."""
        raise BenchmarkError(f"backbone {self.spec.id}: GradCAM maps are drawn for the torchvision "
                             "CNN backbones only")


def known_name(spec: BackboneSpec, name: str, library: str, exists: bool, names: Callable[[], list[str]]) -> str:
    """`name` if its library has it, else an error naming the closest names the library has."""
    if not exists:
        close = difflib.get_close_matches(name, names(), n=5, cutoff=0.6)
        raise BenchmarkError(f"backbone {spec.name!r}: {library} has no model {name!r}"
                             + (f" (close: {', '.join(close)})" if close else ""))
    return name
