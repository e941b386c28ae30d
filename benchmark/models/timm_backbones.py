"""timm backbones: any model of timm's registry, named `timm:<model>` in a protocol.

Weights: `none` (random initialisation), `file` (the state dict at `path`, loaded strictly, its
digest in the job hash; with or without the model's classifier) or `pretrained` (timm's own
file in the local Hugging Face or torch hub cache, never downloaded here: an absent file says
where to put it). The classifier is removed; transformers pool the mean of their patch tokens
(benchmark.models.backbones states the contract).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..core.errors import BenchmarkError
from .backbone_contract import Backbone, known_name
from .specs import BackboneSpec
from .weights import WeightsError, file_digest, load_state_dict, load_strict


# What the family offers, known from a backbone's name alone (benchmark.models.backbones.traits):
FEATURE_MAPS: bool | None = None  # CNN feature maps between stages (None: only the built model tells)
GRAD_CHECKPOINTING = True  # activation checkpointing (set_grad_checkpointing)

WEIGHTS = ("none", "file", "pretrained")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def model_name(spec: BackboneSpec) -> str:
    """The timm name of a `timm:<model>` spec, checked against timm's registry (in well under a second)."""
    import timm

    name = spec.model_name
    return known_name(spec, name, "timm", timm.is_model(name), timm.list_models)


def weights_file(spec: BackboneSpec) -> Path | None:
    name = model_name(spec)
    if spec.weights not in WEIGHTS:
        raise BenchmarkError(f"backbone {spec.name!r}: unknown weights {spec.weights!r} (known: {', '.join(WEIGHTS)})")
    if spec.weights == "none":
        return None
    if spec.weights == "file":
        if not spec.path:
            raise WeightsError(f"backbone {spec.name!r}: weights 'file' need a path (--set backbone.path=FILE)")
        if not Path(spec.path).is_file():
            raise WeightsError(f"{spec.path}: backbone weights file not found")
        return Path(spec.path)
    return _cached_pretrained(name)


def _cached_pretrained(name: str) -> Path:
    """timm's pretrained file for `name` where timm would have cached it; never a download."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise WeightsError(f"timm has no pretrained weights for {name!r}: use weights 'none' or 'file'")
    repo = getattr(cfg, "hf_hub_id", None)
    if repo:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE

        for file_name in HUB_FILES:
            cached = try_to_load_from_cache(repo, file_name)
            if isinstance(cached, str):
                return Path(cached)
        raise WeightsError(f"no local copy of timm {name} weights: put {HUB_FILES[0]} of the Hugging Face "
                           f"repo {repo} in {HF_HUB_CACHE} (the hub cache), or pass it with weights 'file'")
    url = getattr(cfg, "url", None)
    if url:
        hub_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if hub_file.is_file():
            return hub_file
        raise WeightsError(f"no local copy of timm {name} weights: put {Path(url).name} in {hub_file.parent}/, "
                           "or pass it with weights 'file'")
    raise WeightsError(f"timm names no file for the pretrained weights of {name!r}: use weights 'file'")


def _is_transformer(model: nn.Module) -> bool:
    """A model whose features are tokens with class/register tokens in front (timm's ViT family)."""
    return isinstance(getattr(model, "num_prefix_tokens", None), int) and isinstance(getattr(model, "global_pool", None), str)


class TimmBackbone(Backbone):
    def __init__(self, net: nn.Module, spec: BackboneSpec, weights_digest: str):
        input_size = None
        patch_embed = getattr(net, "patch_embed", None)
        if patch_embed is not None and not getattr(patch_embed, "dynamic_img_size", False):
            input_size = int(patch_embed.img_size[0])  # a fixed positional grid
        super().__init__(int(net.num_features), spec, weights_digest, input_size)
        self.net = net
        self.output_fmt = str(getattr(net, "output_fmt", "NCHW"))
        self.prefix_tokens = int(net.num_prefix_tokens) if _is_transformer(net) else None

    def _map(self, features: torch.Tensor) -> torch.Tensor:
        if self.prefix_tokens is not None:  # (B, N, C) tokens -> (B, C, h, w) patch tokens
            grid = self.net.patch_embed.grid_size  # fixed: the input was resized to the model's size
            patches = features[:, self.prefix_tokens:]
            return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *grid)
        if self.output_fmt == "NHWC":
            return features.permute(0, 3, 1, 2)
        return features

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self._map(self.net.forward_features(self.fit_input(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(self.fit_input(x)), pre_logits=True)

    def set_grad_checkpointing(self) -> None:
        self.net.set_grad_checkpointing(True)

    def stage_modules(self) -> list[nn.Module]:
        if self.prefix_tokens is not None or not getattr(self.net, "feature_info", None):
            return super().stage_modules()
        # timm's own list of stage outputs; those at stride 4 and beyond (the stem's left out).
        return [self.net.get_submodule(info["module"]) for info in self.net.feature_info if info["reduction"] >= 4]


def build(spec: BackboneSpec) -> Backbone:
    import timm

    name = model_name(spec)
    path = weights_file(spec)
    net = timm.create_model(name, pretrained=False)
    if path is not None:
        state = load_state_dict(path)
        head = _prefix_of(net, net.get_classifier())
        head_keys = {k for k in net.state_dict() if k.startswith(head)}
        if head_keys and not head_keys & set(state):  # a file saved without the classifier
            net.reset_classifier(0)
        load_strict(net, state, str(path))
    if _is_transformer(net):
        net.reset_classifier(0, global_pool="avg")  # the contract's pool: the patch tokens' mean
    else:
        net.reset_classifier(0)
    return TimmBackbone(net, spec, "none" if path is None else file_digest(str(path.resolve())))


def _prefix_of(net: nn.Module, module: nn.Module) -> str:
    """The state-dict prefix of a submodule (e.g. 'head.' or 'fc.')."""
    for name, candidate in net.named_modules():
        if candidate is module:
            return f"{name}."
    return "\0"
