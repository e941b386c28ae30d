"""What names a backbone or an encoder in a protocol, a recipe and a job's hash: plain data, so
that reading a protocol or a table imports no torch (benchmark.models.backbones and
benchmark.models.encoders build the networks they name)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import BenchmarkError

PAPER_ENCODER = "openclip:ViT-B-32:openai"


@dataclass(frozen=True)
class BackboneSpec:
    name: str = "resnet18"
    weights: str = "msceleb"
    path: str | None = None  # the weights file for msceleb (required) or imagenet (optional)

    @property
    def id(self) -> str:
        return f"{self.name}:{self.weights}"


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
