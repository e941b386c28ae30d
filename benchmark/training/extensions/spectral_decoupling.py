"""Spectral decoupling (Pezeshki et al., NeurIPS 2021, "Gradient Starvation"), as DomainBed's
`algorithms.py: SD` computes it: the method's loss plus `sd_reg` times the mean of its squared
class logits,

    objective = loss + sd_reg * mean(logits ** 2)      (mean over the batch and the classes)

on the logits its cross-entropy is taken on (the method records them: `training_logits`).
DomainBed's default `sd_reg` = 0.1 (`hparams_registry.py`); upstream logs the penalty beside
the loss (here `train/sd_penalty`). Recipe: `sd_reg` (0: off).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .base import TrainingExtension, check, is_off, register_extension


def sd_penalty(logits: torch.Tensor) -> torch.Tensor:
    """mean(logits²), DomainBed's `(all_p ** 2).mean()`."""
    return (logits ** 2).mean()


@register_extension
class SpectralDecoupling(TrainingExtension):
    name = "spectral_decoupling"
    fuses = False  # the penalty is added to one job's loss outside the method's step
    order = 55

    @dataclass(frozen=True)
    class Options:
        sd_reg: float = 0.0  # the penalty's weight (0: off; DomainBed's default 0.1)

    @classmethod
    def validate(cls, recipe: Any) -> None:
        check(recipe.sd_reg >= 0, f"recipe.sd_reg = {recipe.sd_reg}; must be 0 (off) or positive (DomainBed: 0.1)")

    @classmethod
    def label(cls, values: Mapping[str, Any]) -> str:
        return "" if is_off(values.get("sd_reg", "")) else "sd"

    @classmethod
    def refuse(cls, recipe: Any, job: Any) -> str | None:
        if not job.training_logits:
            return f"method {job.method} reports no training logits to penalise"
        return None

    def loss(self, loop: Any, batch: Any, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        penalty = sd_penalty(batch.outputs["logits"])
        parts["sd_penalty"] = penalty.detach()
        return loss + self.recipe.sd_reg * penalty
