"""EAC, Erasing Attention Consistency (ECCV 2022), as zyh-uaiaaaa/Erasing-Attention-Consistency
runs it on clean labels.

The second view is the horizontal flip of the already augmented (noised, erased) first view, so
the erased box is mirrored too; the transform itself has no random flip. Class activation maps
of all seven classes come from the last feature map and the FC weights, detached:

    hm[b, k] = sum_c feat[b, c] * W_fc[k, c]
    loss     = CE(fc(GAP(feat(x1))), y) + lam * MSE(hm(x1), flip(hm(x2)))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.api import (AugmentSpec, BaseHparams, Batch, NUM_CLASSES, TrainedMethod, check_range,
                           register_method)


@dataclass
class EacHparams(BaseHparams):
    lr: float = 2e-4  # the authors' advice for ResNet-18 (1e-4 for their ResNet-50)
    lam: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.lam >= 0, "lam", self.lam, ">= 0")


def attention_maps(feature_map: torch.Tensor, fc_weight: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) x (K, C) -> (B, K, h, w) class activation maps, FC weights detached."""
    return torch.einsum("bchw,kc->bkhw", feature_map, fc_weight.detach())


def consistency_loss(maps: torch.Tensor, flipped_view_maps: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(maps, flipped_view_maps.flip(-1))


@register_method("eac", "EAC (ECCV 2022): flip-consistent class activation maps of an erased image, CE + 5 MSE")
class Eac(TrainedMethod):
    Hparams = EacHparams
    training_logits = True
    fuses = True
    augment_spec = AugmentSpec(flip_p=0.0)  # the flip is the second view, not an augmentation

    def make_model(self) -> nn.Module:
        backbone = self.new_backbone()
        return nn.ModuleDict({"backbone": backbone, "fc": nn.Linear(backbone.dim, NUM_CLASSES)})

    def training_step(self, batch: Batch):
        x, y = batch.images, batch.labels
        backbone, fc = self.model["backbone"], self.model["fc"]
        feat1 = backbone.feature_map(x)
        feat2 = backbone.feature_map(x.flip(-1))
        ce = F.cross_entropy(batch.record_logits(fc(feat1.mean(dim=(2, 3)))), y)
        consistency = consistency_loss(attention_maps(feat1, fc.weight), attention_maps(feat2, fc.weight))
        return ce + self.hparams.lam * consistency, {"ce": ce.detach(), "consistency": consistency.detach()}

    def logits(self, x, rows, data) -> torch.Tensor:
        # The map's average, as in training: on every backbone its CAMs are those of these logits
        # (a backbone's own pool may differ from it, e.g. ConvNeXt's norm after pooling).
        return self.model["fc"](self.model["backbone"].feature_map(x).mean(dim=(2, 3)))
