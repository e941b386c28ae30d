"""sar: sharpness-aware and reliable entropy minimisation (Niu et al., ICLR 2023; mr-eggplant/SAR
sar.py, sam.py).

Adapts the scale and shift of BatchNorm, LayerNorm and GroupNorm layers except the top ones
(names containing `layer4`, `blocks.9`, `blocks.10`, `blocks.11` or `norm.`, or named `norm`:
ResNet's last stage, a ViT-B's last three blocks and final norm). Each batch: the samples whose
entropy is below E0 are reliable; SAM's first step climbs along their mean entropy's gradient
(rho 0.05), the second forward keeps the samples still below E0, and SGD (momentum 0.9) steps with
the gradient taken at the perturbed point. An EMA (0.9) of that second loss below `reset_em`
(0.2 nats) restores the trained model. The batch's prediction is the first forward.

E0 = `e0_fraction` * ln C with C the model's class count (7): upstream's literal 0.4 * ln 1000 is
2.76 nats, above ln 7 = 1.95, and would let every sample through; `e0_classes = 1000` is
upstream's literal. Quirk kept (`clear_ema_on_reset = false`): after a reset upstream sets the EMA
to None and then back to the value that triggered it, so resets often follow each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import (Adaptable, TTAMethod, adapt_norm_affines, affine_parameters, entropy, entropy_margin,
                    make_optimizer, register_tta)

TOP_LAYERS = ("layer4", "blocks.9", "blocks.10", "blocks.11", "norm.")


@dataclass(frozen=True)
class SAROptions:
    lr: float = 2.5e-4  # ResNet-50 at batch >= 32 (upstream scales it by batch / 32 below that)
    momentum: float = 0.9
    rho: float = 0.05
    e0_fraction: float = 0.4
    e0_classes: int = 0  # 0: the model's class count; 1000: upstream's literal
    reset_em: float = 0.2
    clear_ema_on_reset: bool = False


def sar_layers(model: Adaptable):
    return [(name, m) for name, m in model.norm_layers("bn+ln+gn") if not any(t in name for t in TOP_LAYERS)
            and name != "norm" and not name.endswith(".norm")]


@register_tta("sar")
class SAR(TTAMethod):
    description = "reliable, sharpness-aware entropy minimisation on norm layers, with model recovery"
    Options = SAROptions

    @classmethod
    def refuse(cls, options, model: Adaptable, source_val) -> str | None:
        if not affine_parameters(sar_layers(model)):
            return "no norm layer with scale and shift below the top blocks"
        return None

    def setup(self) -> None:
        self.params = adapt_norm_affines(self.model.model, sar_layers(self.model))
        self.optimizer = make_optimizer(self.params, "sgd", self.options.lr, self.options.momentum)
        self.e0 = entropy_margin(self.options.e0_fraction, self.options.e0_classes or self.model.num_classes)
        self.ema = None

    def clear_memory(self) -> None:
        self.ema = None

    def step(self, x, rows, data) -> torch.Tensor:
        with torch.enable_grad():
            logits = self.model.logits(x, rows, data)
            h = entropy(logits)
            reliable = h < self.e0
            h[reliable].mean().backward()
        saved = self._climb()
        with torch.enable_grad():
            h2 = entropy(self.model.logits(x, rows, data))[reliable]
            still = h2 < self.e0
            loss = h2[still].mean()
            if not torch.isnan(loss):
                value = float(loss.detach())
                self.ema = value if self.ema is None else 0.9 * self.ema + 0.1 * value
            loss.backward()
        for p, original in saved:  # back to the unperturbed point; step with the perturbed gradient
            p.data.copy_(original)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.count(forwards=2, backwards=2, updates=1, reliable=int(reliable.sum()), reliable_second=int(still.sum()))
        if self.ema is not None and self.ema < self.options.reset_em:
            ema = self.ema
            self.reset()
            self.count(resets=1)
            self.ema = None if self.options.clear_ema_on_reset else ema  # upstream's order (see module doc)
        return logits.detach().softmax(1)

    @torch.no_grad()
    def _climb(self) -> list:
        """SAM's first step: every parameter moved by rho * g / ||g|| (the norm over all of them)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.norm(torch.stack([g.norm(p=2) for g in grads]), p=2) if grads else torch.tensor(0.0)
        scale = self.options.rho / (norm + 1e-12)
        saved = []
        for p in self.params:
            saved.append((p, p.data.clone()))
            if p.grad is not None:
                p.add_(p.grad * scale.to(p))
        self.optimizer.zero_grad()
        return saved
