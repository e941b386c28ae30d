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
from typing import Iterator

import torch
from torch import nn


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
