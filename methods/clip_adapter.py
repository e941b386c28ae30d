"""CLIP-Adapter (gaopengcuhk/CLIP-Adapter, `clip_adapter.py`): a residual bottleneck on CLIP's image
embedding, classified by CLIP's text embeddings of the class prompts.

    f  = CLIP image embedding (projected, not normalised) of the image under CLIP's policy
    A  = ReLU(W2 ReLU(W1 f))          W1: D -> D/4, W2: D/4 -> D, no biases, ReLU after both
    f' = ratio A + (1 - ratio) f      ratio 0.2, mixing the unnormalised vectors
    logits = exp(logit_scale) <f'/|f'|, t_k/|t_k|>    CLIP's own scale, frozen

Only the adapter trains; CLIP (both towers) stays frozen and in evaluation mode. The text side is
one prompt per class ("a photo of a {} face." with each class's first word), as the released file
uses one template per dataset. D is the encoder's embedding width (the released file hard-codes
RN50's 1024). The released file has no optimiser or schedule (they live in an unreleased Dassl
config); we take CoOp's, which its README points to: SGD lr 0.002, momentum 0.9, weight decay
5e-4, one warm-up epoch at 1e-5, then cosine per epoch. Training images: torchvision's
RandomResizedCrop (scale 0.08-1, bicubic) and a flip, CLIP's normalisation; evaluation: CLIP's
preprocessing of the decoded image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.api import (CLASS_NAMES, CLASSES, AugmentSpec, Batch, OptimizerSettings, TrainedMethod, check_range,
                           random_resized_crop, register_method, require_clip_encoder, tower_size, zero_shot_weights)

FLIP_ONLY = AugmentSpec(noise_p=0.0, flip_p=0.5, erase_p=0.0)


@dataclass
class ClipAdapterHparams:
    ratio: float = 0.2  # the adapter's share of the mixed embedding
    reduction: int = 4
    template: str = "a photo of a {} face."
    crop_scale_min: float = 0.08
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_lr: float = 1e-5

    def __post_init__(self) -> None:
        check_range(0 <= self.ratio <= 1, "ratio", self.ratio, "in [0, 1]")
        check_range(self.reduction >= 1, "reduction", self.reduction, ">= 1")
        check_range(0 < self.crop_scale_min <= 1, "crop_scale_min", self.crop_scale_min, "in (0, 1]")
        check_range(self.lr > 0, "lr", self.lr, "> 0")

    def optimizer(self) -> OptimizerSettings:
        return OptimizerSettings(self.lr, self.weight_decay, 1.0, optimizer="sgd", momentum=self.momentum,
                                 schedule="warmup_cosine_epochs", warmup_lr=self.warmup_lr)


class Adapter(nn.Module):
    def __init__(self, width: int, reduction: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(width, width // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(width // reduction, width, bias=False), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@register_method("clip_adapter", "CLIP-Adapter: residual bottleneck MLP on CLIP's image embedding, text-embedding "
                 "classifier (CLIP frozen)")
class ClipAdapter(TrainedMethod):
    Hparams = ClipAdapterHparams
    training_logits = True
    clip_fp32 = True  # upstream's build_model calls clip_model.float()
    needs_encoder = True
    needs_text_tower = True
    augment_spec = FLIP_ONLY

    def __init__(self, hparams, components, name=""):
        super().__init__(hparams, components, name)
        require_clip_encoder(self.name, components.encoder)

    def make_model(self) -> nn.Module:
        encoder = self.components.encoder
        model = nn.Module()
        model.adapter = Adapter(encoder.dim, self.hparams.reduction)
        words = {c: (name,) for c, name in zip(CLASSES, CLASS_NAMES)}
        text = zero_shot_weights(self.placed_encoder(), (self.hparams.template,), self.device, words)
        model.register_buffer("text", text)  # normalised class embeddings (7, D)
        model.register_buffer("logit_scale", encoder.clip_model.logit_scale.detach().float().to(self.device))
        return model

    def param_groups(self):
        return [{"params": list(self.model.adapter.parameters())}]

    def classify(self, f: torch.Tensor) -> torch.Tensor:
        mixed = self.hparams.ratio * self.model.adapter(f) + (1 - self.hparams.ratio) * f
        text = F.normalize(self.model.text, dim=-1)  # upstream normalises the text features in every forward
        return self.model.logit_scale.exp() * F.normalize(mixed, dim=-1) @ text.T

    def training_step(self, batch: Batch):
        encoder = self.placed_encoder()
        x = random_resized_crop(batch.images, tower_size(encoder.clip_model), (self.hparams.crop_scale_min, 1.0))
        loss = F.cross_entropy(batch.record_logits(self.classify(encoder(x))), batch.labels)
        return loss, {"ce": loss.detach()}

    def logits(self, x, rows, data) -> torch.Tensor:
        return self.classify(self.cached_features(data, rows, policy="clip"))
