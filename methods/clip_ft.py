"""clip_ft: "CLIP + Finetune" of the paper's Table 4.

A frozen encoder's feature F and the trainable backbone's pooled feature h are concatenated and
one linear layer classifies them: logits = W [F ‖ h] + b, cross-entropy only, with CAFE's
optimiser, schedule, augmentations and epochs (inferred: the paper gives no code).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.api import (Batch, EncoderHparams, NUM_CLASSES, TrainedMethod, check_clip_features,
                           register_method)


@register_method("clip_ft", "frozen CLIP feature ‖ backbone feature -> one linear layer (Table 4 'CLIP+Finetune')")
class ClipFinetune(TrainedMethod):
    Hparams = EncoderHparams
    training_logits = True
    fuses = True
    needs_encoder = True

    def __init__(self, hparams, components, name=""):
        super().__init__(hparams, components, name)
        check_clip_features(self.name, hparams.clip_features)

    def make_model(self) -> nn.Module:
        backbone = self.new_backbone()
        fc = nn.Linear(self.components.encoder.dim + backbone.dim, NUM_CLASSES)
        return nn.ModuleDict({"backbone": backbone, "fc": fc})

    def _logits(self, clip_feat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self.model["backbone"](x)
        return self.model["fc"](torch.cat([clip_feat.to(h.dtype), h], dim=1))

    def training_step(self, batch: Batch):
        x, y = batch.images, batch.labels
        loss = F.cross_entropy(batch.record_logits(self._logits(self.encoder_features(batch), x)), y)
        return loss, {"ce": loss.detach()}

    def logits(self, x, rows, data) -> torch.Tensor:
        return self._logits(self.cached_features(data, rows), x)
