"""What names a backbone or an encoder in a protocol, a recipe and a job's hash: plain data, so
that reading a protocol or a table imports no torch (benchmark.models.backbones and
benchmark.models.encoders build the networks they name)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import BenchmarkError

PAPER_ENCODER = "openclip:ViT-B-32:openai"
# A backbone family is a module `<family>_backbones.py` of this package (its weights, its build,
# what it offers); a backbone name "<family>:<model>" picks it, a name without a family's prefix
# the default one (the paper's torchvision ResNets).
DEFAULT_FAMILY = "torchvision"


@functools.cache
def backbone_families() -> tuple[str, ...]:
    """The families there are, from their files (no import)."""
    return tuple(sorted(p.stem.removesuffix("_backbones") for p in Path(__file__).parent.glob("*_backbones.py")))


@dataclass(frozen=True)
class BackboneSpec:
    name: str = "resnet18"
    weights: str = "msceleb"
    path: str | None = None  # the weights file for msceleb (required) or imagenet (optional)

    @property
    def id(self) -> str:
        return f"{self.name}:{self.weights}"

    @property
    def family(self) -> str:
        """The family its name picks ("timm" for "timm:convnext_atto")."""
        prefix, sep, _ = self.name.partition(":")
        return prefix if sep and prefix in backbone_families() else DEFAULT_FAMILY

    @property
    def model_name(self) -> str:
        """The name within its family ("convnext_atto" for "timm:convnext_atto")."""
        return self.name.partition(":")[2] if self.family != DEFAULT_FAMILY else self.name


@dataclass(frozen=True)
class EncoderSpec:
    id: str = PAPER_ENCODER
    path: str | None = None  # a local weights file (state dict or safetensors)

    @property
    def parts(self) -> tuple[str, str, str]:
        parts = self.id.split(":")
        if len(parts) != 3 or parts[0] not in ("openclip", "torchvision", "mae"):
            raise BenchmarkError(f"encoder {self.id!r}: expected openclip:<model>:<pretrained>, "
                                 "torchvision:<model>:imagenet or mae:<model>:visualize")
        return parts[0], parts[1], parts[2]
