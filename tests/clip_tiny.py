"""A tiny open_clip model with a text tower, built at random by the tests that need CLIP's text
side (zero-shot heads, prompts): its vocabulary is the real tokenizer's, the rest is small."""

from __future__ import annotations

MODEL = "test-clip-text"
ENCODER_ID = f"openclip:{MODEL}:random"


def register() -> None:
    from open_clip.factory import _MODEL_CONFIGS

    _MODEL_CONFIGS.setdefault(MODEL, {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}})


def encoder():
    """The frozen encoder (random weights, seeded) with its text tower."""
    import torch

    from benchmark.models.encoders import build_encoder
    from benchmark.models.specs import EncoderSpec

    register()
    torch.manual_seed(0)
    return build_encoder(EncoderSpec(ENCODER_ID))
