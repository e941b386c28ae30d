"""A backbone built from its spec, whatever library holds it: the spec's name picks the family,
one module `<family>_backbones.py` each, found by its file (benchmark.models.specs), none named
here (benchmark.models.backbone_contract states the contract every family keeps):

    resnet18, resnet50, mobilenet_v2      torchvision (torchvision_backbones.py), the paper's
    timm:<model>                          any model of timm's registry (timm_backbones.py)
    openclip:<model>                      the image tower of an open_clip model (openclip_backbones.py)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from .backbone_contract import Backbone
from .specs import BackboneSpec
from .weights import file_digest


def _family(spec: BackboneSpec):
    """The family module the spec's name picks (benchmark.models.specs.backbone_families)."""
    return importlib.import_module(f"{__package__}.{spec.family}_backbones")


def backbone_weights_file(spec: BackboneSpec) -> Path | None:
    """The weights file the spec names (None for weights 'none'); errors say what is missing."""
    return _family(spec).weights_file(spec)


def backbone_weights_digest(spec: BackboneSpec) -> str:
    path = backbone_weights_file(spec)
    return "none" if path is None else file_digest(str(path.resolve()))


@dataclass(frozen=True)
class BackboneTraits:
    """What a backbone's family offers, from its name alone (training extensions refuse by it)."""

    family: str
    feature_maps: bool | None  # CNN feature maps between stages; None: only the built model tells
    grad_checkpointing: bool


def traits(spec: BackboneSpec) -> BackboneTraits:
    family = _family(spec)
    return BackboneTraits(spec.family, family.FEATURE_MAPS, family.GRAD_CHECKPOINTING)


def build_backbone(spec: BackboneSpec) -> Backbone:
    """A fresh backbone with its weights loaded (strictly) as the spec says."""
    return _family(spec).build(spec)


__all__ = ["Backbone", "BackboneSpec", "BackboneTraits", "traits", "backbone_weights_digest", "backbone_weights_file", "build_backbone"]
