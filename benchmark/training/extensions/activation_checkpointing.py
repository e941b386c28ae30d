"""Activation checkpointing of the backbone (timm's and open_clip's `set_grad_checkpointing`):
activations recomputed in the backward pass instead of kept, memory for compute, the same numbers
(so not in the job hash). Recipe: `grad_checkpointing = true`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...models.backbone_contract import Backbone
from .base import TrainingExtension, register_extension


@register_extension
class ActivationCheckpointing(TrainingExtension):
    name = "activation_checkpointing"
    execution_only = ("grad_checkpointing",)
    fuses = False  # checkpointed modules under vmap are another program than the job's
    order = 10

    @dataclass(frozen=True)
    class Options:
        grad_checkpointing: bool = False  # timm's / open_clip's activation checkpointing (memory, not numbers)

    @classmethod
    def is_active(cls, recipe: Any) -> bool:
        return recipe.grad_checkpointing

    @classmethod
    def refuse(cls, recipe: Any, job: Any) -> str | None:
        if not job.backbone_grad_checkpointing:
            return f"backbone {job.backbone_id} offers none (timm and open_clip backbones do)"
        return None

    def setup(self, loop: Any) -> None:
        for backbone in (m for m in loop.model.modules() if isinstance(m, Backbone)):
            backbone.set_grad_checkpointing()
