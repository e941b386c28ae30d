"""The method's optimiser and its schedule, as the shared loop builds them from `OptimizerSettings`
(after any training extension has changed the settings or the parameter groups)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..core.errors import BenchmarkError
from .method import OptimizerSettings


def adam_kernels(impl: str, device: torch.device) -> dict:
    """torch.optim.Adam's keyword for `recipe.adam_impl`: "auto" fuses the update into one kernel
    on CUDA (one launch instead of several per parameter group) and leaves torch's default elsewhere."""
    if impl == "fused" or (impl == "auto" and device.type == "cuda"):
        return {"fused": True}
    if impl == "foreach":
        return {"foreach": True}
    return {}


def optimizer_for(param_groups: list[dict[str, Any]], settings: OptimizerSettings, adam_impl: str,
                  device: torch.device, epochs: int,
                  total_steps: int = 0) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The method's optimiser (Adam, AdamW, or SGD with momentum, with L2 weight decay) and its
    schedule (see OptimizerSettings; `steps_per_step` says whether it steps per optimiser step)."""
    kernels = adam_kernels(adam_impl, device)
    if settings.optimizer == "adamw":
        optimizer = torch.optim.AdamW(param_groups, lr=settings.lr, weight_decay=settings.weight_decay, **kernels)
    elif settings.optimizer == "sgd":
        optimizer = torch.optim.SGD(param_groups, lr=settings.lr, momentum=settings.momentum,
                                    weight_decay=settings.weight_decay)
    elif settings.optimizer == "adam":
        optimizer = torch.optim.Adam(param_groups, lr=settings.lr, weight_decay=settings.weight_decay, **kernels)
    else:
        raise BenchmarkError(f"optimizer {settings.optimizer!r}: expected adam, adamw or sgd")
    return optimizer, _schedule(optimizer, settings, epochs, total_steps)


def _schedule(optimizer: torch.optim.Optimizer, settings: OptimizerSettings, epochs: int,
              total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if settings.schedule == "warmup_cosine_steps":
        return warmup_cosine(optimizer, settings.warmup_steps, total_steps)
    if settings.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if settings.schedule == "warmup_cosine_epochs":
        warm = settings.warmup_lr / settings.lr
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: warm if e == 0 else 0.5 * (1 + math.cos(math.pi * (e - 1) / epochs)))
    if settings.schedule != "decay":
        raise BenchmarkError(f"schedule {settings.schedule!r}: expected decay, cosine, warmup_cosine_epochs or "
                             "warmup_cosine_steps")
    if settings.lr_step > 1:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step, gamma=settings.lr_gamma)
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=settings.lr_gamma)


def steps_per_step(settings: OptimizerSettings) -> bool:
    """Whether the schedule steps after every optimiser step rather than every epoch."""
    return settings.schedule == "warmup_cosine_steps"


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped after every optimiser step: the rate rises linearly to each group's own over
    `warmup_steps`, then falls along a half cosine to 0 at `total_steps`."""
    if warmup_steps >= total_steps:
        raise BenchmarkError(f"recipe.warmup_steps = {warmup_steps}: must be fewer than the job's {total_steps} steps")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """Clip the gradients of every parameter the optimiser steps to a global L2 norm (0: off)."""
    if max_norm > 0:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm)
