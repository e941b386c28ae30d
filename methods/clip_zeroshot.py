"""clip_zeroshot: no training; class prompts through the same CLIP's text tower.

Each class's text embedding is the normalised mean of its normalised prompt embeddings
(templates x class words); an image's logits are 100 x cosine similarity between its CLIP
image feature and each class embedding. It needs the text weights of the same checkpoint: with
an encoder that has no text tower (a torchvision model) it is not applicable and says so.
Images go through the harness's input policy (ImageNet-normalised, as for CAFE), not CLIP's own
preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from benchmark.api import TEMPLATES, BenchmarkError, Numerics, Method, register_method, require_clip_encoder, zero_shot_weights


@dataclass
class ZeroShotHparams:
    templates: tuple[str, ...] = TEMPLATES
    logit_scale: float = 100.0


@register_method("clip_zeroshot", "zero-shot CLIP: averaged class prompts, cosine similarity (no training)")
class ClipZeroShot(Method):
    Hparams = ZeroShotHparams
    needs_encoder = True

    needs_text_tower = True

    def __init__(self, hparams, components, name=""):
        super().__init__(hparams, components, name)
        require_clip_encoder(self.name, components.encoder)
        self.text: torch.Tensor | None = None

    @torch.no_grad()
    def fit(self, train_data, *, recipe, device, log, epoch_end=None) -> None:
        self.place(device, Numerics.resolve(device, recipe.precision))
        self.text = zero_shot_weights(self.placed_encoder(), self.hparams.templates, device)
        if epoch_end is not None:
            epoch_end(1)

    @torch.no_grad()
    def predict(self, data) -> np.ndarray:
        if self.text is None:
            raise BenchmarkError(f"method {self.name}: predict before fit")
        image = F.normalize(self.components.features.get(self.placed_encoder(), data, self.device), dim=-1)
        return torch.softmax(self.hparams.logit_scale * image @ self.text.T, dim=1).cpu().numpy()

    def state_dict(self):
        return {"text": self.text}

    def load_state_dict(self, state) -> None:
        self.text = state["text"]
