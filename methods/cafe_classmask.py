"""cafe_classmask: the reviewers' question to CAFE, "why a mask per face and not one per class?".

One learned mask per class, the same for every face; everything else as `cafe` (the frozen
encoder's feature F of the augmented image, the FC head, the channel-separation and diverse
losses with their weights, the recipe):

    Ft_k   = F * sigmoid(M_k)                 M in R^{7 x width}, learned, initialised at 0
    logit_k = fc(Ft_k)_k                      class k's logit read from the feature under mask k
    G[:, k] = Ft_k[:, k g : (k + 1) g]        class k's channel group, from its own masked feature
    l_sep  = CE(max_g(G * drop), y),  l_div = 1 - mean max_g(G) / g   (as cafe)

Why this form: it changes one thing, where the mask comes from. CAFE's mask is a function of the
face (the backbone's pooled feature); here it is a parameter per class, so no backbone runs, and
the only way a class can use its own mask is to read that class's evidence through it: its logit
and its channel group. With all seven masks equal it is exactly CAFE with one static mask shared
by every face (tested), the ablation between the two.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.api import Batch, BenchmarkError, NUM_CLASSES, TrainedMethod, check_clip_features, register_method

from .cafe import CafeHparams, drop_mask, group_size, separation_and_diversity


def class_groups(ft: torch.Tensor) -> torch.Tensor:
    """(B, 7, width) masked features -> (B, 7, g): class k's channel group from Ft_k."""
    g = group_size(ft.shape[-1])
    return torch.stack([ft[:, k, k * g:(k + 1) * g] for k in range(NUM_CLASSES)], dim=1)


@register_method("cafe_classmask", "CAFE with one learned mask per class instead of per face (the reviewers' "
                 "question; no backbone)")
class CafeClassMask(TrainedMethod):
    Hparams = CafeHparams
    training_logits = True
    needs_encoder = True

    def __init__(self, hparams, components, name=""):
        super().__init__(hparams, components, name)
        check_clip_features(self.name, hparams.clip_features)
        if not hparams.use_mask:
            raise BenchmarkError(f"{self.name}: the masks are the method; use_mask = false is erm")

    def make_model(self) -> nn.Module:
        width = self.components.encoder.dim
        if group_size(width) <= self.hparams.drop_per_group:
            raise BenchmarkError(f"{self.name}: feature width {width} gives groups of {group_size(width)} channels, "
                                 f"too few to drop {self.hparams.drop_per_group}")
        model = nn.Module()
        model.masks = nn.Parameter(torch.zeros(NUM_CLASSES, width))
        model.fc = nn.Linear(width, NUM_CLASSES)
        return model

    def masked(self, f: torch.Tensor) -> torch.Tensor:
        """(B, width) -> (B, 7, width): the feature under each class's mask."""
        masks = torch.sigmoid(self.model.masks) if self.hparams.use_sigmoid else self.model.masks
        return f.float()[:, None, :] * masks[None]

    def class_logits(self, ft: torch.Tensor) -> torch.Tensor:
        return self.model.fc(ft).diagonal(dim1=1, dim2=2)

    def step_extras(self, batch: Batch) -> dict[str, torch.Tensor]:
        if not self.hparams.use_sep:
            return {}
        width = self.components.encoder.dim
        return {"drop": drop_mask(width, self.hparams.drop_per_group, self.rng).to(batch.images.device)}

    def training_step(self, batch: Batch):
        y = batch.labels
        ft = self.masked(self.encoder_features(batch))
        ce = F.cross_entropy(batch.record_logits(self.class_logits(ft)), y)
        extra, parts = separation_and_diversity(class_groups(ft), y, batch.extra.get("drop"), self.hparams)
        return ce + extra, {"ce": ce.detach(), **parts}

    def logits(self, x, rows, data) -> torch.Tensor:
        return self.class_logits(self.masked(self.cached_features(data, rows)))
