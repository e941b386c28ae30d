"""shot_im: information maximisation with the classifier frozen (SHOT's loss without its
pseudo-labels; Liang et al., ICML 2020), run online as T3A's DomainBed code runs it
(matsuolab/T3A adapt_algorithms.py: SHOTIM).

Loss on each batch: the mean entropy of its predictions minus the entropy of their mean
(ln(mean + 1e-5)): confident predictions, spread over the classes. Adam updates every parameter
of the model except its final linear layer, with lr = the trained method's lr * `alpha`; the
network stays in eval mode (BatchNorm with its trained statistics); one step per batch,
predicted before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import Adaptable, TTAMethod, entropy, freeze_all_but, make_optimizer, register_tta


@dataclass(frozen=True)
class ShotIMOptions:
    alpha: float = 1.0  # lr multiplier over the trained method's lr (upstream grid 0.1, 1, 10)
    steps: int = 1
    weight_decay: float = 0.0


def information_maximization_loss(logits: torch.Tensor, epsilon: float = 1e-5) -> torch.Tensor:
    mean = logits.softmax(1).mean(0)
    return entropy(logits).mean(0) + torch.sum(mean * torch.log(mean + epsilon))


@register_tta("shot_im")
class ShotIM(TTAMethod):
    description = "information maximisation on every layer but the frozen linear head"
    Options = ShotIMOptions

    @classmethod
    def refuse(cls, options, model: Adaptable, source_val) -> str | None:
        if model.head is None:
            return "its logits are not the output of one linear layer (no head to freeze)"
        if not [p for p in model.model.parameters() if all(p is not q for q in model.head.parameters())]:
            return "nothing before its linear head is trainable (a probe on cached features)"
        if getattr(model.method.hparams, "lr", None) is None:
            return "the trained method has no learning rate to scale"
        return None

    def setup(self) -> None:
        head = {id(p) for p in self.model.head.parameters()}
        params = [p for p in self.model.model.parameters() if id(p) not in head]
        freeze_all_but(self.model.model, params)
        self.params = params
        lr = self.model.method.hparams.lr * self.options.alpha
        self.optimizer = make_optimizer(params, "adam", lr, weight_decay=self.options.weight_decay)

    def step(self, x, rows, data) -> torch.Tensor:
        for _ in range(self.options.steps):
            with torch.enable_grad():
                logits = self.model.logits(x, rows, data)
                information_maximization_loss(logits).backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
        self.count(updates=self.options.steps, forwards=self.options.steps, backwards=self.options.steps)
        return logits.detach().softmax(1)
