"""CLIP's text tower for the methods that read it: the FER prompts, the zero-shot classifier
built from them, and the check that an encoder has a text tower at all.

Every text-based method (zero-shot CLIP, WiSE-FT's head, CLIP-Adapter's and Tip-Adapter's
classifiers, CoOp's class tokens) depends on the exact prompt strings, so they are here once, in
the canonical class order, and each method records the templates it used as a hyperparameter.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..core.errors import BenchmarkError
from ..core.labels import CLASSES
from .specs import EncoderSpec

CLASS_WORDS = {"surprise": ("surprised",), "fear": ("fearful", "scared"), "disgust": ("disgusted",),
               "happiness": ("happy", "smiling"), "sadness": ("sad",), "anger": ("angry",), "neutral": ("neutral",)}
TEMPLATES = ("a photo of a {} face.", "a close-up photo of a {} person.", "a face that looks {}.")
# One word per class, for the methods whose released code puts a single class name in each
# prompt (CLIP-Adapter's one template, CoOp's class token): each class's first word above.
CLASS_NAMES = tuple(CLASS_WORDS[c][0] for c in CLASSES)


class NotApplicable(BenchmarkError):
    """The method cannot run with this encoder."""


def has_text_tower(encoder: EncoderSpec) -> bool:
    """Whether the encoder is a CLIP model with its text tower (open_clip's); torchvision and MAE
    encoders have none."""
    return encoder.parts[0] == "openclip"


def require_text_tower(method: str, encoder: EncoderSpec) -> None:
    if not has_text_tower(encoder):
        raise NotApplicable(f"{method} is not applicable with encoder {encoder.id}: it has no text tower "
                            "(use an openclip:<model>:<pretrained> encoder, e.g. openclip:ViT-B-32:openai)")


def require_clip_encoder(method: str, encoder) -> None:
    """A method built with an encoder (a FrozenEncoder) that is not CLIP with its text tower stops
    here, before any work (a grid already skipped such jobs: jobs.plan.not_applicable)."""
    if encoder is not None and not encoder.is_clip:
        require_text_tower(method, encoder.spec)


def tokenizer(encoder_id: str):
    """open_clip's tokenizer for the encoder's model."""
    import open_clip

    return open_clip.get_tokenizer(encoder_id.split(":")[1])


def class_embeddings(encode_text, tokenize, templates, device, words=CLASS_WORDS) -> torch.Tensor:
    """(7, dim), the canonical class order: per class, the normalised mean of its normalised
    prompt embeddings (templates x class words)."""
    rows = []
    for name in CLASSES:
        prompts = [t.format(word) for t in templates for word in words[name]]
        emb = F.normalize(encode_text(tokenize(prompts).to(device)).float(), dim=-1)
        rows.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def zero_shot_weights(encoder, templates, device, words=CLASS_WORDS) -> torch.Tensor:
    """`class_embeddings` of the encoder's own CLIP text tower (a FrozenEncoder with clip_model)."""
    return class_embeddings(encoder.clip_model.encode_text, tokenizer(encoder.id), templates, device, words)
