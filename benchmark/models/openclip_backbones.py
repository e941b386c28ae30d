"""open_clip image towers as trainable backbones, named `openclip:<model>` in a protocol.

Weights: an open_clip pretrained tag (`openai`, ...), whose file is found as CAFE's frozen
encoder finds it (the same `open_clip_model.safetensors` in the Hugging Face cache, or `path`),
or `none` (random initialisation). The whole CLIP file is loaded strictly, then the text tower
is dropped. The tower pools the mean of its patch tokens (pool_type 'avg'; the module docstring
of benchmark.models.backbones states the contract); ViT towers only, whose pooling is that mean.
Its input is the harness's ImageNet-normalised image, as the frozen encoder's (input policy
`paper`), resized to the tower's size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..core.errors import BenchmarkError
from .backbone_contract import Backbone, known_name
from .specs import BackboneSpec
from .weights import file_digest, load_state_dict, load_strict



# What the family offers, known from a backbone's name alone (benchmark.models.backbones.traits):
FEATURE_MAPS: bool | None = False  # CNN feature maps between stages (None: only the built model tells)
GRAD_CHECKPOINTING = True  # activation checkpointing (set_grad_checkpointing)

def model_name(spec: BackboneSpec) -> str:
    import open_clip

    name = spec.model_name
    return known_name(spec, name, "open_clip", name in open_clip.list_models(), open_clip.list_models)


def weights_file(spec: BackboneSpec) -> Path | None:
    from .encoders import openclip_weights_file

    name = model_name(spec)
    if spec.weights == "none":
        return None
    return openclip_weights_file(name, spec.weights, spec.path, setting="backbone.path")


class OpenClipBackbone(Backbone):
    def __init__(self, visual: nn.Module, spec: BackboneSpec, weights_digest: str):
        dim = int(visual.output_dim) if visual.proj is not None else int(visual.transformer.width)
        super().__init__(dim, spec, weights_digest, int(visual.image_size[0]))
        self.visual = visual

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        _, tokens = self.visual(self.fit_input(x))  # (B, h*w, width), after ln_post
        if self.visual.proj is not None:
            tokens = tokens @ self.visual.proj
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.visual.grid_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.visual(self.fit_input(x))  # open_clip's own encode_image under pool_type 'avg'
        return pooled

    def set_grad_checkpointing(self) -> None:
        self.visual.set_grad_checkpointing(True)


def build(spec: BackboneSpec) -> Backbone:
    import open_clip
    from open_clip import pretrained as oc_pretrained
    from open_clip.transformer import VisionTransformer

    name = model_name(spec)
    path = weights_file(spec)
    quick_gelu = bool((oc_pretrained.get_pretrained_cfg(name, spec.weights) or {}).get("quick_gelu", False))
    clip = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu)
    if path is not None:
        load_strict(clip, load_state_dict(path), str(path))
    visual = clip.visual
    if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None or visual.final_ln_after_pool:
        raise BenchmarkError(f"backbone {spec.name!r}: its image tower ({type(visual).__name__}) does not pool the "
                             "mean of a patch-token map; open_clip ViT towers (ViT-B-32, ViT-B-16, ...) do")
    visual.pool_type = "avg"
    visual.output_tokens = True
    return OpenClipBackbone(visual, spec, "none" if path is None else file_digest(str(path.resolve())))
