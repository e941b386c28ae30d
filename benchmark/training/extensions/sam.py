"""SAM and ASAM, sharpness-aware minimisation, as davda54/sam (`sam.py`) computes it.

Each step takes two passes over the same batch. The first gradient g gives the ascent

    SAM   e = rho * g / ||g||                 ASAM (adaptive)   e = rho * w^2 * g / || |w| * g ||

(one global L2 norm over every parameter with a gradient, + 1e-12; ASAM's T_w = |w| with eta = 0,
as that repository has it). The weights move to w + e, the loss is computed again and its gradient
g' taken there; the weights go back to w and the base optimiser (the method's Adam or SGD, with its
weight decay and schedule) steps with g'. As the repository's example does, BatchNorm running
statistics are updated by the first pass only (momentum 0 in the second). Training statistics are
the first pass's. A method's random draws made before the step (`step_extras`: CAFE's drop mask) are
the same in both passes; draws inside `training_step` (dropout, RUL's pairing) are drawn again, as
upstream's second forward does.

Recipe: `sam_rho` (0: off; the paper's usual 0.05; ASAM wants about ten times more) and
`sam_adaptive`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from .base import TrainingExtension, check, is_off, register_extension


class SharpnessAware:
    """The perturbation around a base optimiser's parameters: `ascend()` after the first backward,
    `descend()` after the second, then the base optimiser's own step."""

    def __init__(self, optimizer: torch.optim.Optimizer, rho: float, adaptive: bool = False):
        self.optimizer, self.rho, self.adaptive = optimizer, rho, adaptive
        self._saved: dict[torch.nn.Parameter, torch.Tensor] = {}

    def _params(self) -> Iterator[torch.nn.Parameter]:
        return (p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None)

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        return torch.norm(torch.stack([((torch.abs(p) if self.adaptive else 1.0) * p.grad).norm(p=2)
                                       for p in self._params()]), p=2)

    @torch.no_grad()
    def ascend(self) -> None:
        """w <- w + e (w kept), then the gradients cleared for the second pass."""
        scale = self.rho / (self.grad_norm() + 1e-12)
        self._saved = {}
        for p in self._params():
            self._saved[p] = p.detach().clone()
            p.add_((torch.pow(p, 2) if self.adaptive else 1.0) * p.grad * scale.to(p))
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def descend(self) -> None:
        """w back from w + e; the gradients (g', taken at w + e) stay for the base optimiser's step."""
        for p, saved in self._saved.items():
            p.data = saved
        self._saved = {}


@contextlib.contextmanager
def running_stats_frozen(model: nn.Module | None) -> Iterator[None]:
    """BatchNorm momentum 0 (running statistics unchanged) for the second pass, restored after."""
    norms = [] if model is None else [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


@register_extension
class Sam(TrainingExtension):
    """SAM / ASAM around the method's optimiser: the second pass after the first backward."""

    name = "sam"
    fuses = False  # the ascent is one model's global gradient norm
    order = 30

    @dataclass(frozen=True)
    class Options:
        sam_rho: float = 0.0  # SAM's neighbourhood radius (0: off; 0.05 the usual; ASAM about 10x that)
        sam_adaptive: bool = False  # ASAM: the perturbation scaled by |w|

    @classmethod
    def validate(cls, recipe: Any) -> None:
        check(recipe.sam_rho >= 0 and (recipe.sam_rho or not recipe.sam_adaptive),
              f"recipe.sam_rho = {recipe.sam_rho}; must be 0 (off) or positive, and positive for recipe.sam_adaptive")

    @classmethod
    def is_active(cls, recipe: Any) -> bool:
        return recipe.sam_rho > 0

    @classmethod
    def label(cls, values: Mapping[str, Any]) -> str:
        if is_off(values.get("sam_rho", "")):
            return ""
        return "sam" if is_off(values.get("sam_adaptive", "")) else "asam"

    def start(self, loop: Any) -> None:
        self.sam = SharpnessAware(loop.optimizer, self.recipe.sam_rho, self.recipe.sam_adaptive)

    def after_backward(self, loop: Any, batch: Any) -> None:
        """The second pass at w + e; the step that follows uses its gradient at w."""
        self.sam.ascend()
        with running_stats_frozen(loop.model):
            loop.step_loss(batch).backward()
        self.sam.descend()
