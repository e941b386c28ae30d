"""Frozen image encoders: open_clip models (the paper's CLIP ViT-B/32) and torchvision ImageNet nets.

Spec strings: `openclip:<model>:<pretrained>` (paper default `openclip:ViT-B-32:openai`; the tag
`random` builds the architecture with random weights, for tests) and
`torchvision:<model>:imagenet`, and `mae:<model>:visualize` (OFER's latent from a masked
autoencoder, benchmark.models.mae: its features are flattened decoder tokens). An encoder is
frozen, in eval mode, outside every optimizer; it
maps the same ImageNet-normalised tensor the backbone sees to features (B, dim) in float32
(input policy `paper`, as the authors' code did). CLIP runs in fp16 on CUDA, fp32 on CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..core.errors import BenchmarkError
from .specs import EncoderSpec
from .weights import WeightsError, file_digest, load_state_dict, load_strict, network_reachable, torchvision_weights_file

HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class FrozenEncoder(nn.Module):
    def __init__(self, net: nn.Module, dim: int, spec: EncoderSpec, weights_digest: str,
                 clip_model: nn.Module | None = None):
        super().__init__()
        self.net = net
        self.dim = dim
        self.spec = spec
        self.id = spec.id
        self.weights_digest = weights_digest
        # The whole open_clip model (text tower included) for zero-shot use; None for torchvision.
        self.clip_model = clip_model
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenEncoder":
        return super().train(False)  # frozen means eval mode too (BN statistics, dropout)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Outside any autocast of the trainable model: the encoder computes in its own weight
        # dtype (fp16 CLIP on CUDA as the authors', bf16 or fp32 as the recipe says).
        with torch.autocast(x.device.type, enabled=False):
            return self.net(x.to(self.dtype)).float()

    def to_device(self, device: torch.device, dtype: torch.dtype | None = None) -> "FrozenEncoder":
        """Move to `device` with weights in `dtype` (default: fp16 for CLIP on CUDA, as the authors'
        code, else fp32). The fp32 weights are kept aside on the host so that a later job asking
        for fp32 gets the exact original weights back, not a round trip through 16 bits."""
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" and self.clip_model is not None else torch.float32
        if dtype != self.dtype:
            if self.dtype != torch.float32:  # back to the exact fp32 weights first
                self.float().load_state_dict(self._fp32_state)
            if dtype != torch.float32:
                self._fp32_state = {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}
                self.to(dtype)
        return self.to(device)

    @property
    def is_clip(self) -> bool:
        return self.clip_model is not None


class _ClipVisual(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.visual = model.visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(self.visual.image_size)
        if tuple(x.shape[-2:]) != size:  # a ViT's positional grid takes one size: the input is resized to it
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.visual(x)  # projected image embedding, not L2-normalised


def openclip_weights_file(model: str, tag: str, path: str | None, setting: str = "encoder.path") -> Path:
    import open_clip
    from open_clip import pretrained as oc_pretrained

    if path is not None:
        if not Path(path).is_file():
            raise WeightsError(f"{path}: weights file not found ({setting})")
        return Path(path)
    cfg = oc_pretrained.get_pretrained_cfg(model, tag)
    if not cfg:
        raise WeightsError(f"open_clip has no pretrained tag {tag!r} for {model!r} "
                           f"(known: {', '.join(open_clip.list_pretrained_tags_by_model(model)) or 'none'})")
    repo = cfg.get("hf_hub", "").strip("/")
    if repo:
        from huggingface_hub import try_to_load_from_cache

        for name in HF_FILES:
            cached = try_to_load_from_cache(repo, name)
            if isinstance(cached, str):
                return Path(cached)
    if network_reachable("https://huggingface.co"):
        return Path(oc_pretrained.download_pretrained(cfg))
    from huggingface_hub.constants import HF_HUB_CACHE

    raise WeightsError(
        f"no network and no local copy of open_clip {model} '{tag}' weights: download "
        f"{HF_FILES[0]} from the Hugging Face repo {repo or '(see open_clip)'} into {HF_HUB_CACHE} "
        f"(the hub cache), or pass the file with --set {setting}=FILE")


def encoder_weights_file(spec: EncoderSpec) -> Path | None:
    """The weights file of an encoder spec (None for open_clip's `random`), without building it."""
    kind, model, tag = spec.parts
    if kind == "openclip":
        return None if tag == "random" else openclip_weights_file(model, tag, spec.path)
    if kind == "mae":
        from .mae import checkpoint_file

        return checkpoint_file(model, tag, spec.path)
    if tag != "imagenet":
        raise BenchmarkError(f"encoder {spec.id!r}: torchvision encoders take 'imagenet' weights")
    return torchvision_weights_file(model, spec.path)


def encoder_weights_digest(spec: EncoderSpec) -> str:
    path = encoder_weights_file(spec)
    return "random" if path is None else file_digest(str(path.resolve()))


def build_encoder(spec: EncoderSpec) -> FrozenEncoder:
    kind, model, tag = spec.parts
    if kind == "openclip":
        import open_clip
        from open_clip import pretrained as oc_pretrained

        if model not in open_clip.list_models():
            raise BenchmarkError(f"encoder {spec.id!r}: open_clip has no model {model!r}")
        quick_gelu = bool((oc_pretrained.get_pretrained_cfg(model, tag) or {}).get("quick_gelu", False))
        clip = open_clip.create_model(model, pretrained=None, force_quick_gelu=quick_gelu)
        digest = "random"
        if tag != "random":
            weights = openclip_weights_file(model, tag, spec.path)
            load_strict(clip, load_state_dict(weights), str(weights))
            digest = file_digest(str(weights.resolve()))
        return FrozenEncoder(_ClipVisual(clip), int(clip.visual.output_dim), spec, digest, clip_model=clip)
    if kind == "mae":
        from .mae import build_mae_latent

        net, weights = build_mae_latent(model, tag, spec.path)
        return FrozenEncoder(net, net.dim, spec, file_digest(str(weights.resolve())))
    if tag != "imagenet":
        raise BenchmarkError(f"encoder {spec.id!r}: torchvision encoders take 'imagenet' weights")
    import torchvision

    try:
        net = torchvision.models.get_model(model, weights=None)
    except ValueError:
        raise BenchmarkError(f"encoder {spec.id!r}: torchvision has no model {model!r}") from None
    weights = torchvision_weights_file(model, spec.path)
    load_strict(net, load_state_dict(weights), str(weights))
    # Drop the classifier: the encoder's features are the pooled penultimate layer.
    if hasattr(net, "fc"):
        dim = net.fc.in_features
        net.fc = nn.Identity()
    elif hasattr(net, "classifier"):
        dim = getattr(net, "last_channel", None) or next(m for m in net.classifier.modules()
                                                         if isinstance(m, nn.Linear)).in_features
        net.classifier = nn.Identity()
    else:
        raise BenchmarkError(f"encoder {spec.id!r}: do not know how to take the classifier off {model}")
    return FrozenEncoder(net, int(dim), spec, file_digest(str(weights.resolve())))
