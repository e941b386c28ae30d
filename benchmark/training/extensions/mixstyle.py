"""MixStyle, as Dassl's `dassl/modeling/ops/mixstyle.py` computes it and its ResNets place it.

In training, with probability p (one Python `random.random()` draw per call, for the whole batch),
a feature map's per-channel spatial statistics are mixed with another sample's:

    mu, sigma = mean and sqrt(unbiased var + eps) over H, W   (detached: no gradient through them)
    lambda ~ Beta(alpha, alpha), one per sample;  perm = randperm(B)   ("random" mixing)
    out = (x - mu) / sigma * (lambda sigma + (1-lambda) sigma[perm]) + lambda mu + (1-lambda) mu[perm]

Identity in evaluation. One module instance serves every insertion point (each call draws its
own randomness), after the stages the recipe names: `recipe.mixstyle = "1,2,3"` is after the
first three stages past the stem (ResNet's layer1, layer2, layer3: Dassl's resnet18_ms_l123,
the default of the paper; "1,2" is ms_l12). Stages per family (Backbone.stage_modules): ResNets'
layer1..4; MobileNetV2's blocks ending its stride-4, 8, 16, 32 stages (features[3], [6], [13],
[18]; no upstream placement, our analogue); timm CNNs' own stage outputs (`feature_info` at
stride 4 and beyond). Transformers are refused: no CNN feature maps between stages.
Defaults p = 0.5, alpha = 0.1, eps = 1e-6; a single source, so only random mixing (the
"crossdomain" mode needs two domain-labelled halves).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from ...core.errors import BenchmarkError
from ...models.backbone_contract import Backbone
from .base import TrainingExtension, check, is_off, register_extension


class MixStyle(nn.Module):
    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6):
        super().__init__()
        self.p, self.alpha, self.eps = p, alpha, eps
        self.beta = torch.distributions.Beta(alpha, alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or random.random() > self.p:
            return x
        batch = x.size(0)
        mu = x.mean(dim=[2, 3], keepdim=True)
        var = x.var(dim=[2, 3], keepdim=True)
        sig = (var + self.eps).sqrt()
        mu, sig = mu.detach(), sig.detach()
        x_normed = (x - mu) / sig
        lmda = self.beta.sample((batch, 1, 1, 1)).to(x.device)
        perm = torch.randperm(batch)
        mu2, sig2 = mu[perm], sig[perm]
        mu_mix = mu * lmda + mu2 * (1 - lmda)
        sig_mix = sig * lmda + sig2 * (1 - lmda)
        return x_normed * sig_mix + mu_mix


def insert(model: nn.Module | None, stages_text: str, p: float, alpha: float) -> None:
    """One MixStyle after each named stage of every backbone in `model` (a forward hook on the
    stage's module; the MixStyle module is a child of the backbone, so train/eval reach it)."""
    if not stages_text:
        return
    stages = mixstyle_stages(stages_text)
    for backbone in (m for m in (model.modules() if model is not None else []) if isinstance(m, Backbone)):
        modules = backbone.stage_modules()
        if stages[-1] > len(modules):
            raise BenchmarkError(f"recipe.mixstyle = {stages_text!r}: backbone {backbone.spec.id} has {len(modules)} "
                                 "stages after its stem")
        backbone.mixstyle = MixStyle(p, alpha)
        for k in stages:
            modules[k - 1].register_forward_hook(lambda module, inputs, output, ms=backbone.mixstyle: ms(output))


def mixstyle_stages(text: str) -> list[int]:
    """`recipe.mixstyle` ("1,2,3") as stage numbers; an error names what it expected."""
    try:
        stages = [int(part) for part in text.split(",")]
    except ValueError:
        stages = []
    if not stages or sorted(set(stages)) != stages or stages[0] < 1:
        raise BenchmarkError(f"recipe.mixstyle = {text!r}: expected stage numbers in increasing order, e.g. "
                             "\"1,2,3\" (after ResNet's layer1, layer2, layer3) or \"1,2\"")
    return stages


@register_extension
class MixStyleExtension(TrainingExtension):
    name = "mixstyle"
    fuses = False  # hooks on one model's modules
    order = 40

    @dataclass(frozen=True)
    class Options:
        mixstyle: str = ""  # MixStyle after these stages past the stem, e.g. "1,2,3" (ResNet's layer1-3); "" off
        mixstyle_p: float = 0.5
        mixstyle_alpha: float = 0.1

    @classmethod
    def validate(cls, recipe: Any) -> None:
        if recipe.mixstyle:
            mixstyle_stages(recipe.mixstyle)
        check(0 <= recipe.mixstyle_p <= 1 and recipe.mixstyle_alpha > 0,
              f"recipe.mixstyle_p = {recipe.mixstyle_p}, mixstyle_alpha = {recipe.mixstyle_alpha}: p must be in [0, 1] "
              "and alpha positive")

    @classmethod
    def is_active(cls, recipe: Any) -> bool:
        return bool(recipe.mixstyle)

    @classmethod
    def label(cls, values: Mapping[str, Any]) -> str:
        return "" if is_off(values.get("mixstyle", "")) else "mixstyle"

    @classmethod
    def refuse(cls, recipe: Any, job: Any) -> str | None:
        if job.backbone_feature_maps is False:
            return f"backbone {job.backbone_id} is a transformer; MixStyle mixes CNN feature maps between stages"
        return None

    def setup(self, loop: Any) -> None:
        insert(loop.model, self.recipe.mixstyle, self.recipe.mixstyle_p, self.recipe.mixstyle_alpha)
