"""The fine-tuning options large pretrained backbones need, one training extension any method wears.

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

They act on the method's optimiser settings (AdamW, the per-step schedule and clipping are what
a method may also ask for itself, as WiSE-FT does) and on its parameter groups.

Methods do nothing for these: their parameter groups (e.g. RUL's 10x rate for its classifier) are
split here by backbone and decay, each part keeping its group's rate multiplier.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...core.errors import BenchmarkError
from ...models.backbone_contract import Backbone
from .base import TrainingExtension, check, register_extension

# Parameter names never decayed under no_decay_norms, besides 1-d tensors and biases (open_clip's
# towers do not list theirs in no_weight_decay()).
EMBEDDING_NAMES = ("pos_embed", "cls_token", "reg_token", "dist_token", "positional_embedding", "class_embedding")
OPTIMIZERS = ("method", "adamw")
SCHEDULES = ("method", "warmup_cosine")


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


def split_groups(groups: list[dict[str, Any]], model: nn.Module | None, lr: float, weight_decay: float,
                 backbone_lr_scale: float, no_decay_norms: bool) -> list[dict[str, Any]]:
    """The method's parameter groups split by (backbone or not) and (decayed or not), each part with
    its rate and weight decay set (`lr`, `weight_decay`: the method's, where a group sets none);
    the groups as they were when neither option is on."""
    if backbone_lr_scale == 1.0 and not no_decay_norms:
        return groups
    if model is None:
        raise BenchmarkError("recipe.backbone_lr_scale / no_decay_norms: this method exposes no model to split")
    names = {id(p): n for n, p in model.named_parameters()}
    in_backbone = {id(p) for b in backbones_of(model) for p in b.parameters()}
    listed = _no_decay_names(model) if no_decay_norms else set()

    def decays(p: torch.nn.Parameter) -> bool:
        name = names.get(id(p), "")
        return not no_decay_norms or not (p.ndim <= 1 or name.endswith(".bias") or name in listed
                                          or name.rsplit(".", 1)[-1] in EMBEDDING_NAMES)

    out = []
    for group in groups:
        group_lr = group.get("lr", lr)
        decay = group.get("weight_decay", weight_decay)
        parts: dict[tuple[bool, bool], list] = {}
        for p in group["params"]:
            parts.setdefault((id(p) in in_backbone, decays(p)), []).append(p)
        for (backbone, decayed), params in parts.items():
            out.append({**group, "params": params, "lr": group_lr * (backbone_lr_scale if backbone else 1.0),
                        "weight_decay": decay if decayed else 0.0})
    return out


@register_extension
class FineTuning(TrainingExtension):
    name = "finetune"
    fuses = False  # parameter groups split by one model's modules
    order = 45

    @dataclass(frozen=True)
    class Options:
        optimizer: str = "method"  # "method" (the method's own Adam or SGD) or "adamw" (decoupled decay)
        schedule: str = "method"  # "method" (its per-epoch decay) or "warmup_cosine" (per step)
        warmup_steps: int = 0  # warmup_cosine's linear warmup
        backbone_lr_scale: float = 1.0  # the backbone's rate relative to the rest (the heads)
        no_decay_norms: bool = False  # no weight decay on norms, biases and embeddings
        grad_clip_norm: float = 0.0  # clip gradients to this global L2 norm (0: no clipping)

    @classmethod
    def validate(cls, recipe: Any) -> None:
        check(recipe.optimizer in OPTIMIZERS,
              f"recipe.optimizer = {recipe.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        check(recipe.schedule in SCHEDULES, f"recipe.schedule = {recipe.schedule!r}; expected one of {', '.join(SCHEDULES)}")
        check(recipe.warmup_steps >= 0 and (not recipe.warmup_steps or recipe.schedule == "warmup_cosine"),
              f"recipe.warmup_steps = {recipe.warmup_steps}; must be 0 or more, and is schedule = \"warmup_cosine\"'s")
        check(recipe.backbone_lr_scale > 0, f"recipe.backbone_lr_scale = {recipe.backbone_lr_scale}; must be positive")
        check(recipe.grad_clip_norm >= 0, f"recipe.grad_clip_norm = {recipe.grad_clip_norm}; must be 0 (off) or positive")

    def optimizer_settings(self, loop: Any, settings: Any) -> Any:
        r = self.recipe
        changes: dict[str, Any] = {}
        if r.optimizer == "adamw":
            if settings.optimizer not in ("adam", "adamw"):
                raise BenchmarkError(f"recipe.optimizer=adamw: the method trains with {settings.optimizer}, not Adam; "
                                     "AdamW replaces Adam only")
            changes["optimizer"] = "adamw"
        if r.schedule == "warmup_cosine":
            changes.update(schedule="warmup_cosine_steps", warmup_steps=r.warmup_steps)
        if r.grad_clip_norm:
            changes["grad_clip_norm"] = r.grad_clip_norm
        return dataclasses.replace(settings, **changes)

    def param_groups(self, loop: Any, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return split_groups(groups, loop.model, loop.settings.lr, loop.settings.weight_decay,
                            self.recipe.backbone_lr_scale, self.recipe.no_decay_norms)
