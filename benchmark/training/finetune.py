"""The fine-tuning options large pretrained backbones need, applied by the shared loop to any method.

Each is a recipe field, off by default (then the method's own optimiser and schedule run, and a
job's hash is what it was):

    optimizer = "adamw"            AdamW (decoupled weight decay) at the method's rate and decay,
                                   instead of its Adam/SGD with L2 decay
    schedule = "warmup_cosine"     per step: linear warmup over `warmup_steps`, then cosine to 0,
                                   instead of the method's per-epoch decay
    backbone_lr_scale = s          the backbone's parameters at s x their group's rate (the heads
                                   and everything else at the method's)
    no_decay_norms = true          no weight decay on norms, biases, and position/class embeddings
                                   (timm's rule: one-dimensional tensors, `.bias`, and the names a
                                   model lists in its `no_weight_decay()`)
    grad_clip_norm = c             gradients clipped to a global L2 norm of c before each step
    grad_checkpointing = true      timm's and open_clip's activation checkpointing of the backbone
                                   (memory for compute; the same numbers)

Methods do nothing for these: their parameter groups (e.g. RUL's 10x rate for its classifier) are
split here by backbone and decay, each part keeping its group's rate multiplier.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..core.errors import BenchmarkError
from ..models.backbone import Backbone
from .method import OptimizerSettings
from .recipe import Recipe

# Parameter names never decayed under no_decay_norms, besides 1-d tensors and biases (open_clip's
# towers do not list theirs in no_weight_decay()).
EMBEDDING_NAMES = ("pos_embed", "cls_token", "reg_token", "dist_token", "positional_embedding", "class_embedding")


def backbones_of(model: nn.Module | None) -> list[Backbone]:
    return [] if model is None else [m for m in model.modules() if isinstance(m, Backbone)]


def _no_decay_names(model: nn.Module) -> set[str]:
    names = set()
    for backbone in backbones_of(model):
        prefix = next(n for n, m in model.named_modules() if m is backbone)
        for holder_name, holder in backbone.named_modules():
            listed = getattr(holder, "no_weight_decay", None)
            if callable(listed):
                full = ".".join(p for p in (prefix, holder_name) if p)
                names.update(f"{full}.{n}" if full else n for n in listed())
    return names


def split_groups(groups: list[dict[str, Any]], model: nn.Module | None, settings: OptimizerSettings,
                 recipe: Recipe) -> list[dict[str, Any]]:
    """The method's parameter groups split by (backbone or not) and (decayed or not), each part with
    its rate and weight decay set; the groups as they were when neither option is on."""
    if recipe.backbone_lr_scale == 1.0 and not recipe.no_decay_norms:
        return groups
    if model is None:
        raise BenchmarkError("recipe.backbone_lr_scale / no_decay_norms: this method exposes no model to split")
    names = {id(p): n for n, p in model.named_parameters()}
    in_backbone = {id(p) for b in backbones_of(model) for p in b.parameters()}
    listed = _no_decay_names(model) if recipe.no_decay_norms else set()

    def decays(p: torch.nn.Parameter) -> bool:
        name = names.get(id(p), "")
        return not recipe.no_decay_norms or not (p.ndim <= 1 or name.endswith(".bias") or name in listed
                                                 or name.rsplit(".", 1)[-1] in EMBEDDING_NAMES)

    out = []
    for group in groups:
        lr = group.get("lr", settings.lr)
        decay = group.get("weight_decay", settings.weight_decay)
        parts: dict[tuple[bool, bool], list] = {}
        for p in group["params"]:
            parts.setdefault((id(p) in in_backbone, decays(p)), []).append(p)
        for (backbone, decayed), params in parts.items():
            out.append({**group, "params": params, "lr": lr * (recipe.backbone_lr_scale if backbone else 1.0),
                        "weight_decay": decay if decayed else 0.0})
    return out


def adamw(groups: list[dict[str, Any]], settings: OptimizerSettings, kernels: dict) -> torch.optim.Optimizer:
    if settings.optimizer not in ("adam", "adamw"):
        raise BenchmarkError(f"recipe.optimizer=adamw: the method trains with {settings.optimizer}, not Adam; "
                             "AdamW replaces Adam only")
    return torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay, **kernels)


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


def enable_checkpointing(model: nn.Module | None, recipe: Recipe) -> None:
    if recipe.grad_checkpointing:
        for backbone in backbones_of(model):
            backbone.set_grad_checkpointing()
