"""RandConv (Xu et al., ICLR 2021), as wildphoton/RandConv runs it (`lib/networks/rand_conv.py`,
`randconv_trainer.py: train_one_epoch`): the training images go through a convolution whose
weights are drawn anew, so the network cannot rely on local texture.

The layer (`RandConvModule` over `MultiScaleRandConv2d`): 3 → 3 channels, stride 1, padding k // 2,
no bias unless `randconv_rand_bias`. Each draw (`randomize`) picks one kernel size of
`randconv_kernel_sizes` uniformly (Python's `random.randint`), fills that size's weights from
`randconv_distribution` (torch's `kaiming_normal_`, fan-in, gain 1, by default), a bias from
U(±1/√fan_in) when asked, and with `randconv_mixing` a new α = `random.random()`. Applied to the
normalised images x: y = conv(x); mixing: y = α·y + (1 − α)·x; `randconv_clamp`: y clamped to
the range normalised [0, 1] pixels take; with probability `randconv_identity_prob` (one
`torch.rand(1)` per call) y = x. The layer is drawn once when training starts, and again before
the first batch of every epoch and every `randconv_freq`-th batch (upstream's batch_idx rule).

The consistency loss (`randconv_consistency`, weight `randconv_consistency_weight`): after the
step's forward pass, the layer is drawn again and the network sees a second view, drawn again,
a third; with p the softmaxes of the three, m = log(clamp((p0 + p1 + p2) / 3, 1e-7, 1)),
loss += w · (KL(m ‖ p0) + KL(m ‖ p1) + KL(m ‖ p2)) / 3 (torch's `kl_div(m, p, "batchmean")`).
Upstream's quirk, kept: unless `randconv_augmix`, the two extra views are drawn from the already
convolved images (the trainer reassigns `inputs`), so they are convolved twice; with
`randconv_augmix` the cross-entropy is taken on the clean images and both views on them.

Defaults are upstream's argparse defaults (kernel 3, no mixing, no consistency loss, weight 1);
the paper's digits setting "RC_mix" is `randconv_kernel_sizes = "1,3,5,7"`, `randconv_mixing`,
`randconv_consistency`, `randconv_consistency_weight = 10`. Needs the method's training logits
for the consistency loss.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..augment import IMAGENET_MEAN, IMAGENET_STD
from ...core.errors import BenchmarkError
from .base import TrainingExtension, check, is_off, register_extension

DISTRIBUTIONS = ("kaiming_normal", "kaiming_uniform", "kaiming_normal_clamp", "xavier_normal")


def kernel_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in str(text).split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(k < 1 or k % 2 == 0 for k in sizes):
        raise ValueError(text)
    return sizes


class RandomConvolution:
    """Upstream's RandConvModule over MultiScaleRandConv2d: one 3 -> 3 convolution per kernel size
    (built, and so drawn, as upstream builds them), the current draw, and its application."""

    def __init__(self, sizes: list[int], mixing: bool = False, identity_prob: float = 0.0, rand_bias: bool = False,
                 distribution: str = "kaiming_normal", clamp: bool = False,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        self.sizes, self.mixing, self.identity_prob = sizes, mixing, identity_prob
        self.rand_bias, self.distribution, self.clamp = rand_bias, distribution, clamp
        mean_t, std_t = torch.tensor(mean).reshape(3, 1, 1), torch.tensor(std).reshape(3, 1, 1)
        self.range_up, self.range_low = (1 - mean_t) / std_t, (0 - mean_t) / std_t
        # The convolutions as upstream's ModuleDict builds them (their default initialisation
        # draws from torch's generator, as upstream's does), then its first draw, then alpha.
        self.convs = {k: nn.Conv2d(3, 3, k, stride=1, padding=k // 2, bias=rand_bias) for k in sizes}
        self.scale = sizes[0]
        self._draw_conv()  # MultiScaleRandConv2d.__init__
        self.alpha = random.random() if mixing else 1.0  # RandConvModule.__init__, after it

    def _draw_weight(self, weight: torch.Tensor) -> torch.Tensor:
        new = torch.zeros_like(weight)
        if self.distribution == "kaiming_uniform":
            nn.init.kaiming_uniform_(new, nonlinearity="conv2d")
        elif self.distribution == "kaiming_normal":
            nn.init.kaiming_normal_(new, nonlinearity="conv2d")
        elif self.distribution == "kaiming_normal_clamp":
            std = nn.init.calculate_gain("conv2d", 0) / math.sqrt(nn.init._calculate_correct_fan(new, "fan_in"))
            new.normal_(0, std)
            new = new.clamp(-2 * std, 2 * std)
        else:
            nn.init.xavier_normal_(new)
        return new

    def randomize(self) -> None:
        """RandConvModule.randomize: a new convolution, then a new alpha when mixing."""
        self._draw_conv()
        if self.mixing:
            self.alpha = random.random()

    @torch.no_grad()
    def _draw_conv(self) -> None:
        """MultiScaleRandConv2d.randomize: one size drawn, its weights (and bias) redrawn."""
        self.scale = self.sizes[random.randint(0, len(self.sizes) - 1)]
        conv = self.convs[self.scale]
        conv.weight = nn.Parameter(self._draw_weight(conv.weight))
        if conv.bias is not None:
            bound = 1 / math.sqrt(nn.init._calculate_fan_in_and_fan_out(conv.weight)[0])
            conv.bias = nn.Parameter(nn.init.uniform_(torch.zeros_like(conv.bias), -bound, bound))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity_prob > 0 and torch.rand(1) < self.identity_prob:
            return x
        conv = self.convs[self.scale]
        out = F.conv2d(x, conv.weight.to(x), None if conv.bias is None else conv.bias.to(x), stride=1,
                       padding=self.scale // 2)
        if self.mixing:
            out = self.alpha * out + (1 - self.alpha) * x
        if self.clamp:
            out = torch.max(torch.min(out, self.range_up.to(x)), self.range_low.to(x))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"convs": {k: conv.state_dict() for k, conv in self.convs.items()}, "scale": self.scale,
                "alpha": self.alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, conv in self.convs.items():
            conv.load_state_dict(state["convs"][k])
        self.scale, self.alpha = int(state["scale"]), float(state["alpha"])


def consistency_loss(logits: list[torch.Tensor]) -> torch.Tensor:
    """Upstream's invariant loss over the clean (or first) view and the two others."""
    probs = [F.softmax(z.to(torch.promote_types(z.dtype, torch.float32)), dim=1) for z in logits]  # bf16 -> fp32
    mixture = torch.clamp(sum(probs) / 3.0, 1e-7, 1).log()
    return sum(F.kl_div(mixture, p, reduction="batchmean") for p in probs) / 3.0


@register_extension
class RandConv(TrainingExtension):
    name = "randconv"
    fuses = False  # one layer drawn per step on the host, for one model
    order = 50

    @dataclass(frozen=True)
    class Options:
        randconv: bool = False
        randconv_kernel_sizes: str = "3"  # one is drawn per randomisation, e.g. "1,3,5,7" (the paper's multi-scale)
        randconv_mixing: bool = False
        randconv_identity_prob: float = 0.0
        randconv_rand_bias: bool = False
        randconv_distribution: str = "kaiming_normal"
        randconv_clamp: bool = False
        randconv_freq: int = 1  # redraw every this many batches (and at each epoch's first)
        randconv_consistency: bool = False
        randconv_consistency_weight: float = 1.0
        randconv_augmix: bool = False

    @classmethod
    def validate(cls, recipe: Any) -> None:
        try:
            kernel_sizes(recipe.randconv_kernel_sizes)
        except ValueError:
            check(False, f"recipe.randconv_kernel_sizes = {recipe.randconv_kernel_sizes!r}: expected odd kernel sizes, "
                         "e.g. \"3\" or \"1,3,5,7\"")
        check(recipe.randconv_distribution in DISTRIBUTIONS,
              f"recipe.randconv_distribution = {recipe.randconv_distribution!r}; expected one of {', '.join(DISTRIBUTIONS)}")
        check(0 <= recipe.randconv_identity_prob <= 1,
              f"recipe.randconv_identity_prob = {recipe.randconv_identity_prob}; must be in [0, 1]")
        check(recipe.randconv_freq >= 1, f"recipe.randconv_freq = {recipe.randconv_freq}; must be 1 or more")
        check(recipe.randconv_consistency_weight >= 0,
              f"recipe.randconv_consistency_weight = {recipe.randconv_consistency_weight}; must be 0 or more")

    @classmethod
    def is_active(cls, recipe: Any) -> bool:
        return recipe.randconv

    @classmethod
    def label(cls, values: Mapping[str, Any]) -> str:
        return "" if is_off(values.get("randconv", "")) else "randconv"

    @classmethod
    def refuse(cls, recipe: Any, job: Any) -> str | None:
        if recipe.randconv_consistency and not job.training_logits:
            return f"method {job.method} reports no training logits for recipe.randconv_consistency"
        return None

    def setup(self, loop: Any) -> None:
        r = self.recipe
        if r.randconv_consistency and type(loop.method).after_step.__qualname__.split(".")[0] != "TrainedMethod":
            raise BenchmarkError(f"recipe.randconv_consistency: {loop.method.name} decides on the host after each step "
                                 "from its last forward pass, which the consistency loss's extra views would replace")
        self.layer = RandomConvolution(kernel_sizes(r.randconv_kernel_sizes), r.randconv_mixing,
                                       r.randconv_identity_prob, r.randconv_rand_bias, r.randconv_distribution,
                                       r.randconv_clamp)

    def transform_batch(self, loop: Any, batch: Any) -> Any:
        batch_idx = loop.batches_done  # upstream's index of the batch within its epoch
        if (batch_idx + 1) % self.recipe.randconv_freq == 0 or batch_idx == 0:
            self.layer.randomize()
        if self.recipe.randconv_consistency and self.recipe.randconv_augmix:
            return batch  # the cross-entropy on clean images; the views in `loss`
        batch.images = self.layer(batch.images)
        return batch

    def loss(self, loop: Any, batch: Any, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.recipe.randconv_consistency:
            return loss
        logits = [batch.outputs["logits"]]
        for _ in range(2):
            self.layer.randomize()
            view = dataclasses.replace(batch, images=self.layer(batch.images), outputs={}, extra=dict(batch.extra))
            loop.method.training_step(view)
            logits.append(view.outputs["logits"])
        invariant = consistency_loss(logits)
        parts["randconv_consistency"] = invariant.detach()
        return loss + self.recipe.randconv_consistency_weight * invariant

    def state_dict(self) -> dict[str, Any]:
        return self.layer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.layer.load_state_dict(state)
