"""erm: the plain backbone + linear classifier trained with cross-entropy.

The "baseline" row of the paper's Table 2 and the "ResNet-18" row of Table 3.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.api import BaseHparams, Batch, NUM_CLASSES, TrainedMethod, register_method


@register_method("erm", "backbone + linear classifier, cross-entropy only (Table 2 baseline)")
class Erm(TrainedMethod):
    Hparams = BaseHparams
    training_logits = True
    fuses = True

    def make_model(self) -> nn.Module:
        backbone = self.new_backbone()
        return nn.ModuleDict({"backbone": backbone, "fc": nn.Linear(backbone.dim, NUM_CLASSES)})

    def training_step(self, batch: Batch):
        x, y = batch.images, batch.labels
        loss = F.cross_entropy(batch.record_logits(self.model["fc"](self.model["backbone"](x))), y)
        return loss, {"ce": loss.detach()}

    def logits(self, x, rows, data) -> torch.Tensor:
        return self.model["fc"](self.model["backbone"](x))
