"""RUL, Relative Uncertainty Learning (NeurIPS 2021), as zyh-uaiaaaa/Relative-Uncertainty-Learning
runs it.

Two heads on the last feature map give a 64-d mean `mu` and log-variance. In training, each
sample is mixed with a random partner by their relative uncertainty:

    s_i = mean_k exp(logvar_ik),   w_i = s_i / (s_i + s_perm(i))
    z_i = w_i mu_i + (1 - w_i) mu_perm(i),   loss = 0.5 CE(fc(z), y) + 0.5 CE(fc(z), y_perm)

At test time the prediction is fc(mu): no mixing, BN running statistics, no dropout.
The FC layer learns 10x faster than the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.api import (BaseHparams, Batch, NUM_CLASSES, ONE_OF_FLIP_NOISE, TrainedMethod, check_range,
                           register_method)


@dataclass
class RulHparams(BaseHparams):
    lr: float = 2e-4
    fc_lr_factor: float = 10.0
    embed_dim: int = 64
    dropout: float = 0.4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.fc_lr_factor > 0, "fc_lr_factor", self.fc_lr_factor, "> 0")
        check_range(self.embed_dim >= 1, "embed_dim", self.embed_dim, ">= 1")
        check_range(0 <= self.dropout < 1, "dropout", self.dropout, "in [0, 1)")


def head(channels: int, spatial: int, dim: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.BatchNorm2d(channels, eps=2e-5, affine=False), nn.Dropout(dropout), nn.Flatten(),
                         nn.Linear(channels * spatial, dim), nn.BatchNorm1d(dim, eps=2e-5))


def mixing_weights(logvar: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    s = logvar.exp().mean(dim=1)
    return s / (s + s[perm])


def mix(mu: torch.Tensor, logvar: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    w = mixing_weights(logvar, perm)[:, None]
    return w * mu + (1 - w) * mu[perm]


@register_method("rul", "RUL (NeurIPS 2021): uncertainty-weighted mixing of sample pairs, add-up loss")
class Rul(TrainedMethod):
    Hparams = RulHparams
    training_logits = True
    augment_spec = ONE_OF_FLIP_NOISE  # as SCN: one of {flip, noise} with p = 0.5
    # 2: the one-of augmentation, and the feature-map probe no longer updates the backbone's
    # BatchNorm running statistics (1 ran it in training mode).
    version = 2

    def make_model(self) -> nn.Module:
        backbone = self.new_backbone()
        with torch.no_grad():  # the heads flatten the feature map, so its size fixes their width
            # In eval mode: in training mode the probe would move the pre-trained BatchNorm
            # running statistics towards a black image (the authors' RUL never does).
            backbone.eval()
            h, w = backbone.feature_map(torch.zeros(1, 3, self.input_size, self.input_size)).shape[2:]
            backbone.train()
        hp = self.hparams
        return nn.ModuleDict({"backbone": backbone,
                              "mu": head(backbone.dim, h * w, hp.embed_dim, hp.dropout),
                              "logvar": head(backbone.dim, h * w, hp.embed_dim, hp.dropout),
                              "fc": nn.Linear(hp.embed_dim, NUM_CLASSES)})

    def param_groups(self):
        fc = list(self.model["fc"].parameters())
        fc_ids = {id(p) for p in fc}
        rest = [p for p in self.model.parameters() if id(p) not in fc_ids]
        return [{"params": rest}, {"params": fc, "lr": self.hparams.lr * self.hparams.fc_lr_factor}]

    def training_step(self, batch: Batch):
        x, y = batch.images, batch.labels
        feat = self.model["backbone"].feature_map(x)
        mu, logvar = self.model["mu"](feat), self.model["logvar"](feat)
        perm = torch.randperm(len(y), device=y.device)
        logits = batch.record_logits(self.model["fc"](mix(mu, logvar, perm)))
        loss = 0.5 * F.cross_entropy(logits, y) + 0.5 * F.cross_entropy(logits, y[perm])
        return loss, {"addup": loss.detach()}

    def logits(self, x, rows, data) -> torch.Tensor:
        return self.model["fc"](self.model["mu"](self.model["backbone"].feature_map(x)))
