"""norm: each test batch normalised by its own BatchNorm statistics (TENT's "norm" baseline,
a.k.a. test-time BN adaptation; DequanWang/tent norm.py). No parameter changes.

With `prior` N > 0, TTAB's form: the statistics used are N * source + (1 - N) * batch, with the
batch variance unbiased as TTAB's momentum-1 buffer computes it. N = 0 is tent's: the batch's own
mean and biased variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..base import Adaptable, TTAMethod, full_precision, register_tta, use_batch_statistics


@dataclass(frozen=True)
class NormOptions:
    prior: float = 0.0  # weight of the source statistics (TTAB's N); 0 = the batch's alone (tent)


@register_tta("norm")
class Norm(TTAMethod):
    description = "BatchNorm statistics of each test batch (no parameter changes)"
    Options = NormOptions

    @classmethod
    def check(cls, options) -> str | None:
        return None if 0.0 <= options.prior <= 1.0 else f"prior = {options.prior}: expected a weight in [0, 1]"

    @classmethod
    def refuse(cls, options, model: Adaptable, source_val) -> str | None:
        if not model.norm_layers("bn"):
            return "the trained model has no BatchNorm layer (a LayerNorm-only or cached-feature model)"
        return None

    def setup(self) -> None:
        self.layers = self.model.norm_layers("bn")
        if self.options.prior == 0:
            use_batch_statistics(self.layers)
            return
        for _, m in self.layers:  # source statistics kept; mixed with the batch's before each forward
            m.register_buffer("source_mean", m.running_mean.clone())
            m.register_buffer("source_var", m.running_var.clone())
            m.register_forward_pre_hook(self._mix)

    def _mix(self, module: nn.Module, inputs) -> None:
        x = full_precision(inputs[0])
        dims = [d for d in range(x.dim()) if d != 1]
        prior = self.options.prior
        module.running_mean.copy_(prior * module.source_mean + (1 - prior) * x.mean(dims))
        module.running_var.copy_(prior * module.source_var + (1 - prior) * x.var(dims, unbiased=True))

    @torch.no_grad()
    def step(self, x, rows, data) -> torch.Tensor:
        self.count(forwards=1)
        return self.model.logits(x, rows, data).softmax(1)
