"""WiSE-FT (mlfoundations/wise-ft): fine-tune CLIP's image tower end to end from its zero-shot head,
then interpolate the weights of the zero-shot and the fine-tuned model.

The model is CLIP's image tower (a trainable copy of the encoder's, fp32) and a linear head
initialised as the zero-shot classifier: per class the normalised mean of the normalised prompt
embeddings, times exp(logit_scale) (100 for OpenAI's CLIP) folded into the weights, with a zero
but trainable bias; the head L2-normalises its input, also while fine-tuning. Everything trains
with AdamW (weight decay 0.1 on every parameter), a linear warm-up over `warmup_steps` (500) and a
cosine to 0 stepped every step, gradients clipped to norm 1, cross-entropy; lr 3e-5 (the README's
end-to-end recipe; `src/args.py`'s default 1e-3 is the linear-classifier one). Training images:
RandomResizedCrop (scale 0.9-1, bicubic), no flip, CLIP's normalisation.

After the last epoch, for every alpha of `alphas` (0, 0.1, ..., 1) the whole state dict is
theta = (1 - alpha) theta_zero-shot + alpha theta_fine-tuned (head and buffers included; integer
buffers truncated) and every target is evaluated, logged at steps after the last epoch with
`wise_ft/alpha`; the reported `alpha` (0.5) is evaluated last, so it is the job's final result
and its saved model. `benchmark table --selection source_val` then picks, per job, the step (an
epoch of fine-tuning or an alpha) best on the source's validation split. The run's figure
`wise_ft_alphas.png` is the WiSE-FT paper's first figure for this job: in-domain against mean
unseen accuracy over alpha.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.api import (TEMPLATES, AugmentSpec, Batch, OptimizerSettings, TrainedMethod, check_range,
                           in_domain_and_unseen, random_resized_crop, register_method, require_clip_encoder,
                           to_clip_input, tower_size, zero_shot_weights)

NO_AUGMENT = AugmentSpec(noise_p=0.0, flip_p=0.0, erase_p=0.0)
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass
class WiseFtHparams:
    lr: float = 3e-5
    weight_decay: float = 0.1
    warmup_steps: int = 500
    grad_clip_norm: float = 1.0
    crop_scale_min: float = 0.9
    alphas: tuple[float, ...] = ALPHAS
    alpha: float = 0.5  # the reported mixing weight
    templates: tuple[str, ...] = TEMPLATES

    def __post_init__(self) -> None:
        check_range(self.lr > 0, "lr", self.lr, "> 0")
        check_range(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, ">= 0")
        check_range(all(0 <= a <= 1 for a in self.alphas) and len(self.alphas) > 0, "alphas", self.alphas,
                    "values in [0, 1]")
        check_range(0 <= self.alpha <= 1, "alpha", self.alpha, "in [0, 1]")

    def optimizer(self) -> OptimizerSettings:
        return OptimizerSettings(self.lr, self.weight_decay, 1.0, optimizer="adamw", schedule="warmup_cosine_steps",
                                 warmup_steps=self.warmup_steps, grad_clip_norm=self.grad_clip_norm)


class ClassificationHead(nn.Linear):
    """wise-ft's ClassificationHead: normalise the input, then the linear layer."""

    def __init__(self, weights: torch.Tensor):
        super().__init__(weights.shape[1], weights.shape[0])
        self.weight = nn.Parameter(weights.clone())
        self.bias = nn.Parameter(torch.zeros(weights.shape[0], dtype=weights.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x / x.norm(dim=-1, keepdim=True))


def merge(zero_shot: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """wise-ft's `_merge` over every key: (1 - alpha) theta_0 + alpha theta_1 (integer tensors in
    float, then truncated back as loading them does)."""
    if set(zero_shot) != set(finetuned):
        raise ValueError("the zero-shot and fine-tuned state dicts have different keys")
    out = {}
    for key, theta_0 in zero_shot.items():
        theta_1 = finetuned[key].to(theta_0.device)
        if theta_0.is_floating_point():
            out[key] = (1 - alpha) * theta_0 + alpha * theta_1
        else:
            out[key] = ((1 - alpha) * theta_0.double() + alpha * theta_1.double()).to(theta_0.dtype)
    return out


@register_method("wise_ft", "WiSE-FT: CLIP's image tower fine-tuned from its zero-shot head, weights interpolated "
                 "with the zero-shot model (every alpha evaluated, 0.5 reported)")
class WiseFt(TrainedMethod):
    Hparams = WiseFtHparams
    training_logits = True
    clip_fp32 = True  # upstream casts CLIP's tower to fp32
    needs_encoder = True
    needs_text_tower = True
    augment_spec = NO_AUGMENT

    def __init__(self, hparams, components, name=""):
        super().__init__(hparams, components, name)
        require_clip_encoder(self.name, components.encoder)
        self.zero_shot_state: dict[str, torch.Tensor] | None = None

    def make_model(self) -> nn.Module:
        encoder = self.components.encoder.to_device(self.device, torch.float32)  # the exact fp32 weights
        clip = encoder.clip_model
        visual = copy.deepcopy(clip.visual).float().requires_grad_(True)
        weights = clip.logit_scale.detach().exp().float() * zero_shot_weights(encoder, self.hparams.templates,
                                                                              self.device)
        model = nn.ModuleDict({"visual": visual, "head": ClassificationHead(weights.cpu())})
        self.zero_shot_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model["head"](self.model["visual"](x))

    def training_step(self, batch: Batch):
        size = tower_size(self.components.encoder.clip_model)
        x = random_resized_crop(batch.images, size, (self.hparams.crop_scale_min, 1.0))
        loss = F.cross_entropy(batch.record_logits(self.forward(x.to(batch.images.dtype))), batch.labels)
        return loss, {"ce": loss.detach()}

    def logits(self, x, rows, data) -> torch.Tensor:
        return self.forward(to_clip_input(x, tower_size(self.components.encoder.clip_model)))

    def fit(self, train_data, *, recipe, device, log, epoch_end=None, resume=None, validation=None) -> None:
        super().fit(train_data, recipe=recipe, device=device, log=log, epoch_end=epoch_end, resume=resume,
                    validation=validation)
        finetuned = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        zero_shot = {k: v.to(finetuned[k].device) for k, v in self.zero_shot_state.items()}
        order = [a for a in self.hparams.alphas if a != self.hparams.alpha] + [self.hparams.alpha]
        curve = []
        for k, alpha in enumerate(order, start=1):
            self.model.load_state_dict(merge(zero_shot, finetuned, alpha))
            step = recipe.epochs + k
            log.metrics({"wise_ft/alpha": alpha}, step=step)
            if epoch_end is not None:
                metrics = epoch_end(step) or {}
                curve.append((alpha, *in_domain_and_unseen(metrics, train_data.dataset)))
        if len(curve) > 1:
            log.figure("wise_ft_alphas.png", alpha_figure(sorted(curve)))


def alpha_figure(curve: list[tuple[float, float, float]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    alphas, own, unseen = zip(*curve)
    ax.plot([100 * v for v in own], [100 * v for v in unseen], marker="o")
    for alpha, x, y in curve:
        ax.annotate(f"{alpha:g}", (100 * x, 100 * y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("in-domain accuracy (%)")
    ax.set_ylabel("mean unseen accuracy (%)")
    ax.set_title("WiSE-FT: zero-shot (alpha 0) to fine-tuned (1)")
    fig.tight_layout()
    return fig
