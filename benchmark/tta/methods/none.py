"""none: no adaptation, the trained model's plain prediction, through the same online stream
(a check of the stream: it must equal the evaluator's offline prediction)."""

from __future__ import annotations

import torch

from ..base import NO_ADAPTATION, TTAMethod, register_tta


@register_tta(NO_ADAPTATION)
class NoAdaptation(TTAMethod):
    description = "the trained model as it is (the reference column)"

    @torch.no_grad()
    def step(self, x, rows, data) -> torch.Tensor:
        self.count(forwards=1)
        return self.model.logits(x, rows, data).softmax(1)
