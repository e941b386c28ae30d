"""tent: entropy minimisation on the norm layers' scale and shift (Wang et al., ICLR 2021;
DequanWang/tent tent.py).

Each batch: normalised by its own BatchNorm statistics, its logits' mean entropy minimised by
one optimiser step on the affine parameters of the norm layers (everything else frozen); the
batch's prediction is the forward before that update. Defaults are the released code's config:
Adam, lr 1e-3, betas (0.9, 0.999), one step, BatchNorm2d only (`norm_types = "bn+ln+gn"` adds
LayerNorm and GroupNorm, as SAR's and TTAB's copies do). The ImageNet recipe every follow-up
uses is `optimizer = "sgd"`, `lr = 2.5e-4` (momentum 0.9).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import NORM_TYPES, Adaptable, TTAMethod, adapt_norm_affines, affine_parameters, entropy, make_optimizer, register_tta


@dataclass(frozen=True)
class TentOptions:
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only (tent's SGD: nesterov)
    steps: int = 1
    norm_types: str = "bn"


@register_tta("tent")
class Tent(TTAMethod):
    description = "entropy minimisation on the norm layers' affine parameters"
    Options = TentOptions

    @classmethod
    def check(cls, options) -> str | None:
        if options.steps < 1:
            return f"steps = {options.steps}: at least 1"
        if options.optimizer not in ("adam", "sgd"):
            return f"optimizer = {options.optimizer!r}: expected adam or sgd"
        if options.norm_types not in NORM_TYPES:
            return f"norm_types = {options.norm_types!r}: expected one of {', '.join(NORM_TYPES)}"
        return None

    @classmethod
    def refuse(cls, options, model: Adaptable, source_val) -> str | None:
        if not affine_parameters(model.norm_layers(options.norm_types)):
            return f"no {options.norm_types} norm layer with scale and shift in the trained model"
        return None

    def setup(self) -> None:
        params = adapt_norm_affines(self.model.model, self.model.norm_layers(self.options.norm_types))
        self.optimizer = make_optimizer(params, self.options.optimizer, self.options.lr, self.options.momentum,
                                        nesterov=True)

    def step(self, x, rows, data) -> torch.Tensor:
        for _ in range(self.options.steps):
            with torch.enable_grad():
                logits = self.model.logits(x, rows, data)
                loss = entropy(logits).mean()
                loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
        self.count(updates=self.options.steps, forwards=self.options.steps, backwards=self.options.steps)
        return logits.detach().softmax(1)
