"""SCN, Self-Cure Network (CVPR 2020), as kaiwang960112/Self-Cure-Network's train.py runs it.

    alpha  = sigmoid(Linear(h))                       h: the backbone's pooled feature
    logits = alpha * fc(h)                            used for training and test
    RR     = max(0, margin_1 - (mean alpha_high - mean alpha_low))   high = top int(0.7 B) by alpha
    loss   = CE(logits, y) + RR
    from epoch `relabel_epoch` on, after each step: if p_max - p_label > margin_2 the sample's
    label becomes argmax p, and stays so for later epochs.

`relabel_rule = "code"` relabels any sample of the batch (what the released code does);
`"paper"` only the low-importance group (what the paper describes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.api import (BaseHparams, Batch, BenchmarkError, NUM_CLASSES, ONE_OF_FLIP_NOISE, Relabel,
                           TrainedMethod, check_range, register_method)


@dataclass
class ScnHparams(BaseHparams):
    lr: float = 1e-3  # SCN's Adam default
    beta: float = 0.7  # fraction of the batch in the high-importance group
    margin_1: float = 0.15  # the README advises 0.07 with batch 64
    margin_2: float = 0.2
    relabel_epoch: int = 10
    relabel_rule: str = "code"  # "code": any sample; "paper": only the low-importance group

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(0 < self.beta < 1, "beta", self.beta, "in (0, 1)")
        for key in ("margin_1", "margin_2"):
            check_range(getattr(self, key) >= 0, key, getattr(self, key), ">= 0")
        check_range(self.relabel_epoch >= 1, "relabel_epoch", self.relabel_epoch, ">= 1")


def rank_regularisation(alpha: torch.Tensor, beta: float, margin: float) -> torch.Tensor:
    """max(0, margin - (mean of the top int(B*beta) alphas - mean of the rest))."""
    ordered, _ = torch.sort(alpha.flatten(), descending=True)
    high = int(len(ordered) * beta)
    if high == 0 or high == len(ordered):
        return ordered.new_zeros(())
    return F.relu(margin - (ordered[:high].mean() - ordered[high:].mean()))


def relabel(logits: torch.Tensor, labels: torch.Tensor, alpha: torch.Tensor, margin: float, beta: float,
            rule: str) -> torch.Tensor:
    """Boolean mask of the samples whose label becomes argmax: p_max - p_label > margin."""
    probs = torch.softmax(logits, dim=1)
    p_max, _ = probs.max(dim=1)
    gap = p_max - probs.gather(1, labels[:, None]).squeeze(1)
    change = gap > margin
    if rule == "paper":
        order = torch.argsort(alpha.flatten(), descending=True)
        low = torch.zeros_like(change)
        low[order[int(len(order) * beta):]] = True
        change &= low
    return change


@register_method("scn", "SCN (CVPR 2020): attention-weighted logits, rank regularisation, relabelling from epoch 10")
class Scn(TrainedMethod):
    Hparams = ScnHparams
    training_logits = True
    # The authors' augmentation: with p = 0.5 one of {flip, Gaussian noise}, never both; no other flip.
    augment_spec = ONE_OF_FLIP_NOISE
    version = 2  # 2: the one-of augmentation (1 used CAFE's independent flip and noise)

    def __init__(self, hparams, components, name=""):
        super().__init__(hparams, components, name)
        if hparams.relabel_rule not in ("code", "paper"):
            raise BenchmarkError(f"{self.name}: relabel_rule = {hparams.relabel_rule!r}; expected 'code' or 'paper'")
        self._relabelled = 0
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._epoch_seen = 0

    def make_model(self) -> nn.Module:
        backbone = self.new_backbone()
        return nn.ModuleDict({"backbone": backbone, "fc": nn.Linear(backbone.dim, NUM_CLASSES),
                              "attention": nn.Sequential(nn.Linear(backbone.dim, 1), nn.Sigmoid())})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.model["backbone"](x)
        alpha = self.model["attention"](h)
        return alpha * self.model["fc"](h), alpha

    def training_step(self, batch: Batch):
        x, y = batch.images, batch.labels
        logits, alpha = self.forward(x)
        ce = F.cross_entropy(batch.record_logits(logits), y)
        rr = rank_regularisation(alpha, self.hparams.beta, self.hparams.margin_1)
        self._last = (logits.detach().float(), y, alpha.detach())
        return ce + rr, {"ce": ce.detach(), "rr": rr.detach()}

    def after_step(self, batch: Batch, epoch: int) -> Relabel | None:
        if epoch < self.hparams.relabel_epoch or self._last is None:
            return None
        logits, labels, alpha = self._last
        change = relabel(logits, labels, alpha, self.hparams.margin_2, self.hparams.beta,
                         self.hparams.relabel_rule).cpu().numpy()
        new = logits.argmax(1).cpu().numpy()
        really = change & (new != labels.cpu().numpy())
        self._relabelled += int(really.sum())
        return Relabel(batch.index[really], new[really])

    def training_state(self) -> dict:
        # The epoch's count so far: a checkpoint written inside an epoch goes on counting from it.
        return {**super().training_state(), "relabelled": self._relabelled}

    def load_training_state(self, state: dict) -> None:
        super().load_training_state(state)
        self._relabelled = int(state.get("relabelled", 0))

    def epoch_metrics(self) -> dict[str, float]:
        changed, self._relabelled = self._relabelled, 0
        return {"train/relabelled": float(changed)}

    def logits(self, x, rows, data) -> torch.Tensor:
        return self.forward(x)[0]
