"""An outside package that adds a method to the harness: ERM with label smoothing.

Installed (or on sys.path with its dist-info), it declares the entry point

    [benchmark.methods]
    example = fer_plugin_example

and `benchmark run --methods erm_smooth` trains it like any built-in method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.api import BaseHparams, Batch, NUM_CLASSES, TrainedMethod, check_range, register_method


@dataclass
class SmoothHparams(BaseHparams):  # lr, weight_decay, lr_gamma from BaseHparams
    smoothing: float = 0.1  # share of each target's mass spread over the other classes

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(0 <= self.smoothing < 1, "smoothing", self.smoothing, "in [0, 1)")


@register_method("erm_smooth", "example plugin: backbone + linear classifier, label-smoothed cross-entropy")
@register_method("erm_smooth_strong", "example plugin: erm_smooth with smoothing 0.3", smoothing=0.3)
class ErmSmooth(TrainedMethod):
    Hparams = SmoothHparams

    def make_model(self) -> nn.Module:
        backbone = self.new_backbone()  # the protocol's backbone (ResNet-18 in the paper)
        return nn.ModuleDict({"backbone": backbone, "fc": nn.Linear(backbone.dim, NUM_CLASSES)})

    def training_step(self, batch: Batch):
        logits = self.model["fc"](self.model["backbone"](batch.images))
        loss = F.cross_entropy(logits, batch.labels, label_smoothing=self.hparams.smoothing)
        return loss, {"ce_smooth": loss.detach()}

    def logits(self, x: torch.Tensor, rows: slice, data) -> torch.Tensor:
        return self.model["fc"](self.model["backbone"](x))
