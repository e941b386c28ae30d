"""torchvision backbones: ResNet-18 (the paper's), ResNet-50 and MobileNetV2.

`feature_map(x)` is the last feature map (B, C, h, w), `Backbone(x)` its global average pool
(B, C), the "M" of CAFE. Weights: `msceleb` (the resnet18_msceleb.pth every FER paper uses; the
user gives its path), `imagenet` (torchvision's), or `none`. Loading is strict: a mismatch names
the keys.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from ..core.errors import BenchmarkError
from .backbone_contract import Backbone
from .specs import BackboneSpec
from .weights import WeightsError, file_digest, load_state_dict, load_strict, torchvision_weights_file


# What the family offers, known from a backbone's name alone (benchmark.models.backbones.traits):
FEATURE_MAPS: bool | None = True  # CNN feature maps between stages (None: only the built model tells)
GRAD_CHECKPOINTING = False  # activation checkpointing (set_grad_checkpointing)

BACKBONES = ("resnet18", "resnet50", "mobilenet_v2")
WEIGHTS = ("msceleb", "imagenet", "none")
MSCELEB_FILE = "resnet18_msceleb.pth"


class TorchvisionBackbone(Backbone):
    def __init__(self, trunk: nn.Module, dim: int, spec: BackboneSpec, weights_digest: str):
        super().__init__(dim, spec, weights_digest)
        self.trunk = trunk  # the state dict's keys: trunk.<torchvision name>

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def stage_modules(self) -> list[nn.Module]:
        if self.spec.name.startswith("resnet"):
            return list(self.trunk[4:8])  # layer1..layer4
        # MobileNetV2's features: the blocks that end its stride-4, 8, 16 and 32 stages.
        return [self.trunk[i] for i in (3, 6, 13, 18)]

    def gradcam_layer(self) -> nn.Module:
        return self.trunk[-1]  # ResNet's layer4, MobileNetV2's last conv block


def _torchvision_model_name_ok(name: str) -> None:
    if name not in BACKBONES:
        raise BenchmarkError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)}, timm:<model>, "
                             "openclip:<model>)")


def _torchvision_model(name: str) -> nn.Module:
    _torchvision_model_name_ok(name)
    return torchvision.models.get_model(name, weights=None)


def _trunk(name: str, model: nn.Module) -> tuple[nn.Module, int]:
    """Everything before global pooling, and its channel count."""
    if name.startswith("resnet"):
        layers = [model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3, model.layer4]
        return nn.Sequential(*layers), model.fc.in_features
    return model.features, model.last_channel  # mobilenet_v2 (features end with ReLU6)


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def weights_file(spec: BackboneSpec) -> Path | None:
    """The weights file the spec names (None for weights 'none'); errors say what is missing."""
    if spec.weights not in WEIGHTS:
        raise BenchmarkError(f"unknown backbone weights {spec.weights!r} (known: {', '.join(WEIGHTS)})")
    _torchvision_model_name_ok(spec.name)
    if spec.weights == "msceleb":
        if spec.name != "resnet18":
            raise BenchmarkError(f"msceleb weights exist for resnet18 only, not {spec.name}")
        if not spec.path:
            raise WeightsError(f"backbone weights 'msceleb' need the path of {MSCELEB_FILE} "
                               "(--set backbone.path=FILE), or use weights 'imagenet' or 'none'")
        if not Path(spec.path).is_file():
            raise WeightsError(f"{spec.path}: backbone weights file not found")
        return Path(spec.path)
    if spec.weights == "imagenet":
        return torchvision_weights_file(spec.name, spec.path)
    return None


def build(spec: BackboneSpec) -> Backbone:
    """A fresh backbone with its weights loaded (strictly) as the spec says."""
    path = weights_file(spec)
    model = _torchvision_model(spec.name)
    if path is not None:
        # msceleb: torchvision-style keys under 'state_dict', including the 1000-way fc; a
        # DataParallel copy prefixes every key with 'module.', which is stripped explicitly.
        state = _strip_prefix(load_state_dict(path), "module.")
        load_strict(model, state, str(path))
    trunk, dim = _trunk(spec.name, model)  # the pretrained classifier is dropped here
    return TorchvisionBackbone(trunk, dim, spec, "none" if path is None else file_digest(str(path.resolve())))
