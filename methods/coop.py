"""CoOp (KaiyangZhou/CoOp, `trainers/coop.py`): context vectors learned in front of each class name
and run through CLIP's frozen text tower.

Prompt of class k: [SOS, ctx_1 .. ctx_M, tokens of "<class name>.", EOT, padding] as token
embeddings (the class token at the end), plus CLIP's positional embedding, through the text
transformer (its causal mask), `ln_final`, the row at the end-of-text token (the argmax of the
token ids), `text_projection`. Image features from CLIP's frozen image tower under CLIP's input
policy; logits = exp(logit_scale) <img/|img|, txt/|txt|>, CLIP's own scale, frozen.

Only the context trains: M = `n_ctx` (16) vectors ~ N(0, 0.02^2) shared by every class ("unified";
`csc` gives each class its own), or, with `ctx_init` ("a photo of a"), the token embeddings of
those words, M then being their number and the context always unified (upstream's quirks).
SGD lr 0.002, momentum 0.9, weight decay 5e-4, Dassl's schedule per epoch (the first epoch at a
constant 1e-5, then a cosine shifted by one epoch that never reaches 0); training images
RandomResizedCrop (0.08-1, bicubic) and a flip, CLIP's normalisation. `precision`: "auto" trains
in the encoder's dtype (fp16 on CUDA, upstream's default; fp32 on the CPU), "fp32" in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.api import (CLASS_NAMES, AugmentSpec, Batch, BenchmarkError, OptimizerSettings, TrainedMethod,
                           check_range, random_resized_crop, register_method, require_clip_encoder, tokenizer,
                           tower_size)

FLIP_ONLY = AugmentSpec(noise_p=0.0, flip_p=0.5, erase_p=0.0)
PRECISIONS = ("auto", "fp32")


@dataclass
class CoopHparams:
    n_ctx: int = 16
    ctx_init: str = ""  # e.g. "a photo of a": M becomes its word count, the context unified
    csc: bool = False  # class-specific contexts (random init only)
    class_names: tuple[str, ...] = CLASS_NAMES
    precision: str = "auto"
    crop_scale_min: float = 0.08
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_lr: float = 1e-5

    def __post_init__(self) -> None:
        check_range(self.n_ctx >= 1, "n_ctx", self.n_ctx, ">= 1")
        check_range(self.precision in PRECISIONS, "precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        check_range(len(self.class_names) == 7, "class_names", self.class_names, "seven names, in the canonical order")
        check_range(self.lr > 0, "lr", self.lr, "> 0")

    def optimizer(self) -> OptimizerSettings:
        return OptimizerSettings(self.lr, self.weight_decay, 1.0, optimizer="sgd", momentum=self.momentum,
                                 schedule="warmup_cosine_epochs", warmup_lr=self.warmup_lr)


class PromptLearner(nn.Module):
    """The context vectors and the fixed parts of each class's prompt (upstream's PromptLearner,
    class token at the end)."""

    def __init__(self, clip, tokenize, hparams: CoopHparams, dtype: torch.dtype, device: torch.device):
        super().__init__()
        width = clip.ln_final.weight.shape[0]
        n_ctx, csc = hparams.n_ctx, hparams.csc
        with torch.no_grad():
            if hparams.ctx_init:
                init = hparams.ctx_init.replace("_", " ")
                n_ctx, csc = len(init.split(" ")), False
                ctx = clip.token_embedding(tokenize([init]).to(device)).to(dtype)[0, 1:1 + n_ctx]
                prefix = init
            else:
                shape = (len(hparams.class_names), n_ctx, width) if csc else (n_ctx, width)
                ctx = torch.empty(shape, dtype=dtype, device=device)
                nn.init.normal_(ctx, std=0.02)
                prefix = " ".join(["X"] * n_ctx)
            prompts = [f"{prefix} {name.replace('_', ' ')}." for name in hparams.class_names]
            tokenized = tokenize(prompts).to(device)
            embedding = clip.token_embedding(tokenized).to(dtype)
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(ctx.clone())
        self.register_buffer("token_prefix", embedding[:, :1].clone())  # SOS
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:].clone())  # class, ".", EOT, padding
        self.register_buffer("tokenized", tokenized)

    def forward(self) -> torch.Tensor:
        ctx = self.ctx
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.token_prefix.shape[0], -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)


def encode_prompts(clip, prompts: torch.Tensor, tokenized: torch.Tensor) -> torch.Tensor:
    """upstream's TextEncoder.forward on the installed open_clip: embeddings + positions, the
    transformer with its causal mask, ln_final, the end-of-text row, text_projection."""
    from open_clip.transformer import text_global_pool

    x = prompts + clip.positional_embedding.to(prompts.dtype)
    x = clip.transformer(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)
    x = text_global_pool(x, tokenized, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
    return x @ clip.text_projection if not isinstance(clip.text_projection, nn.Linear) else clip.text_projection(x)


@register_method("coop", "CoOp: context vectors learned in front of each class name through CLIP's frozen text "
                 "tower (class token at the end)")
class Coop(TrainedMethod):
    Hparams = CoopHparams
    training_logits = True
    needs_encoder = True
    needs_text_tower = True
    augment_spec = FLIP_ONLY

    def __init__(self, hparams, components, name=""):
        super().__init__(hparams, components, name)
        require_clip_encoder(self.name, components.encoder)
        if hparams.ctx_init and hparams.csc:
            raise BenchmarkError(f"{self.name}: ctx_init = {hparams.ctx_init!r} makes the context unified (as upstream); "
                                 "csc = true takes a random init")

    def encoder(self):
        """The frozen CLIP, in fp32 when `precision` says so, else in the numerics's dtype."""
        if self.hparams.precision == "fp32":
            return self.components.encoder.to_device(self.device, torch.float32)
        return self.placed_encoder()

    def make_model(self) -> nn.Module:
        encoder = self.encoder()
        return PromptLearner(encoder.clip_model, tokenizer(encoder.id), self.hparams, encoder.dtype, self.device)

    def text_features(self) -> torch.Tensor:
        clip = self.encoder().clip_model
        return encode_prompts(clip, self.model(), self.model.tokenized)

    def classify(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        scale = self.components.encoder.clip_model.logit_scale.exp()
        image = F.normalize(image_features, dim=-1)
        text = F.normalize(text_features, dim=-1)
        return scale * image.to(text.dtype) @ text.T

    def training_step(self, batch: Batch):
        encoder = self.encoder()
        x = random_resized_crop(batch.images, tower_size(encoder.clip_model), (self.hparams.crop_scale_min, 1.0))
        loss = F.cross_entropy(batch.record_logits(self.classify(encoder(x), self.text_features()).float()), batch.labels)
        return loss, {"ce": loss.detach()}

    def logits(self, x, rows, data) -> torch.Tensor:
        with torch.no_grad():
            return self.classify(self.cached_features(data, rows, policy="clip"), self.text_features()).float()
