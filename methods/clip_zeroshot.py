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

from benchmark.api import BenchmarkError, CLASSES, Execution, Method, register_method


CLASS_WORDS = {"surprise": ("surprised",), "fear": ("fearful", "scared"), "disgust": ("disgusted",),
               "happiness": ("happy", "smiling"), "sadness": ("sad",), "anger": ("angry",), "neutral": ("neutral",)}
TEMPLATES = ("a photo of a {} face.", "a close-up photo of a {} person.", "a face that looks {}.")


@dataclass
class ZeroShotHparams:
    templates: tuple[str, ...] = TEMPLATES
    logit_scale: float = 100.0


class NotApplicable(BenchmarkError):
    """The method cannot run with this encoder."""


def class_embeddings(encode_text, tokenize, templates, device) -> torch.Tensor:
    """(7, dim): per class, the normalised mean of its normalised prompt embeddings."""
    rows = []
    for name in CLASSES:
        prompts = [t.format(word) for t in templates for word in CLASS_WORDS[name]]
        emb = F.normalize(encode_text(tokenize(prompts).to(device)).float(), dim=-1)
        rows.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(rows)


@register_method("clip_zeroshot", "zero-shot CLIP: averaged class prompts, cosine similarity (no training)")
class ClipZeroShot(Method):
    Hparams = ZeroShotHparams
    needs_encoder = True

    def __init__(self, hparams, components, name=""):
        super().__init__(hparams, components, name)
        if components.encoder.clip_model is None:
            raise NotApplicable(f"{self.name} is not applicable with encoder {components.encoder.id}: it has no "
                                "text tower (use an openclip:<model>:<pretrained> encoder)")
        self.text: torch.Tensor | None = None

    @torch.no_grad()
    def fit(self, train_data, *, recipe, device, log, epoch_end=None) -> None:
        import open_clip

        self.place(device, Execution.resolve(device, recipe.precision))
        encoder = self.placed_encoder()
        model_name = encoder.id.split(":")[1]
        self.text = class_embeddings(encoder.clip_model.encode_text, open_clip.get_tokenizer(model_name),
                                     self.hparams.templates, device)
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
