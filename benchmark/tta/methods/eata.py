"""eata and eta: efficient anti-forgetting test-time adaptation (Niu et al., ICML 2022;
mr-eggplant/EATA eata.py, main.py). `eta` is EATA without the Fisher regulariser.

Adapts BatchNorm2d's scale and shift. Each batch: samples with entropy below E0 are reliable;
of those, once a moving mean probability m exists, only the ones whose softmax has |cos| with m
below `d_margin` (not redundant) count; m follows them (0.9 / 0.1). The loss is their entropy
weighted by exp(E0 - entropy), plus for EATA `fisher_alpha` * sum F * (theta - theta0)^2, the
Fisher F estimated once on `fisher_size` source validation images with the model's own
pseudo-labels (the square of each batch's mean gradient, averaged over batches). SGD, lr 2.5e-4,
momentum 0.9; no step when no sample counts. Predicted before the update.

E0 as SAR's (0.4 * ln C; `e0_classes = 1000` for upstream's literal). `d_margin` 0.05 was chosen
for 1,000 classes: with 7, the cosine between a confident softmax and a near-uniform mean is about
1/sqrt(7) = 0.38, so almost nothing passes after the first batch; `reliable_second` counts what
does. Reset clears m (upstream's reset keeps it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..base import (Adaptable, TTAMethod, adapt_norm_affines, affine_parameters, entropy, entropy_margin,
                    make_optimizer, register_tta)


@dataclass(frozen=True)
class EATAOptions:
    lr: float = 2.5e-4
    momentum: float = 0.9
    e0_fraction: float = 0.4
    e0_classes: int = 0  # 0: the model's class count; 1000: upstream's literal
    d_margin: float = 0.05
    fisher_alpha: float = 2000.0
    fisher_size: int = 2000
    fisher_batch: int = 64


@dataclass(frozen=True)
class ETAOptions:
    lr: float = 2.5e-4
    momentum: float = 0.9
    e0_fraction: float = 0.4
    e0_classes: int = 0
    d_margin: float = 0.05


@register_tta("eta")
class ETA(TTAMethod):
    description = "entropy minimisation on reliable, non-redundant samples, weighted by their confidence"
    Options = ETAOptions
    fisher = False

    @classmethod
    def refuse(cls, options, model: Adaptable, source_val) -> str | None:
        if not affine_parameters(model.norm_layers("bn")):
            return "the trained model has no BatchNorm layer with scale and shift"
        if cls.fisher and source_val is None:
            return "its Fisher regulariser needs the source's validation split, which this job has none of (run eta)"
        return None

    def setup(self) -> None:
        self.params = adapt_norm_affines(self.model.model, self.model.norm_layers("bn"))
        self.optimizer = make_optimizer(self.params, "sgd", self.options.lr, self.options.momentum)
        self.e0 = entropy_margin(self.options.e0_fraction, self.options.e0_classes or self.model.num_classes)
        self.mean_prob = None
        self.fishers = self.estimate_fisher() if self.fisher else None

    def clear_memory(self) -> None:
        self.mean_prob = None

    def estimate_fisher(self):
        """(F, theta0) per adapted parameter: squared batch-mean gradients of the cross-entropy
        against the model's own predictions on source validation images, averaged over batches."""
        data = self.source_val
        generator = np.random.default_rng(0)
        rows = generator.permutation(len(data))[:self.options.fisher_size]
        sums = [torch.zeros_like(p) for p in self.params]
        batches = 0
        for start in range(0, len(rows), self.options.fisher_batch):
            chunk = torch.as_tensor(rows[start:start + self.options.fisher_batch])
            with torch.enable_grad():
                logits = self.model.logits(self.model.inputs(data, chunk), chunk, data)
                F.cross_entropy(logits, logits.argmax(1)).backward()
            for total, p in zip(sums, self.params):
                if p.grad is not None:
                    total += p.grad.detach() ** 2
            self.optimizer.zero_grad()
            batches += 1
        return [(total / max(batches, 1), p.detach().clone()) for total, p in zip(sums, self.params)]

    def step(self, x, rows, data) -> torch.Tensor:
        with torch.enable_grad():
            logits = self.model.logits(x, rows, data)
            h = entropy(logits)
            reliable = torch.nonzero(h < self.e0).flatten()
            h1 = h[reliable]
            probs = logits[reliable].softmax(1)
            if self.mean_prob is not None:
                cos = F.cosine_similarity(self.mean_prob.unsqueeze(0), probs, dim=1)
                kept = torch.nonzero(torch.abs(cos) < self.options.d_margin).flatten()
                h1, probs = h1[kept], probs[kept]
            if len(h1):
                batch_mean = probs.detach().mean(0)
                self.mean_prob = batch_mean if self.mean_prob is None else 0.9 * self.mean_prob + 0.1 * batch_mean
            weight = torch.exp(self.e0 - h1.detach())
            loss = (h1 * weight).mean(0)
            if self.fishers is not None:
                loss = loss + self.options.fisher_alpha * sum(
                    (fisher * (p - theta0) ** 2).sum() for (fisher, theta0), p in zip(self.fishers, self.params))
            if len(h1):
                loss.backward()
                self.optimizer.step()
                self.count(updates=1, backwards=1)
        self.optimizer.zero_grad()
        self.count(forwards=1, reliable=len(reliable), reliable_second=len(h1))
        return logits.detach().softmax(1)


@register_tta("eata")
class EATA(ETA):
    description = "eta plus a Fisher-weighted anchor to the trained weights (source validation images)"
    Options = EATAOptions
    fisher = True
    needs_source_val = True
