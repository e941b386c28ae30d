"""CoOp (methods/coop.py) on a tiny random open_clip model: initialised from "a photo of a" it
gives, before any step, exactly CLIP's zero-shot logits of "a photo of a {class}."; the prompt
layout (SOS, context, class tokens) and which tensor trains; CSC; Dassl's schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from benchmark.core.errors import BenchmarkError
from benchmark.training.method import MemoryLog
from benchmark.training.plugins import build_method
from benchmark.training.recipe import Recipe


CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def components(clip_components):
    return clip_components


@pytest.fixture(scope="module")
def data(studio_val32):
    return studio_val32


def built(components, **hparams):
    method = build_method("coop", hparams, components)
    method.build(CPU, 32)
    return method


def test_word_init_is_exactly_zero_shot_before_any_step(components, data):
    from benchmark.models.clip_text import tokenizer

    method = built(components, ctx_init="a photo of a")
    assert method.model.n_ctx == 4 and method.model.ctx.shape[0] == 4
    clip = components.encoder.clip_model
    prompts = [f"a photo of a {name}." for name in method.hparams.class_names]
    with torch.no_grad():
        text = clip.encode_text(tokenizer(components.encoder.id)(prompts))
        image = components.features.get(components.encoder, data, CPU, policy="clip")
        zero_shot = clip.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    ours = torch.log(torch.from_numpy(method.predict(data)))
    assert (torch.log_softmax(zero_shot, 1) - ours).abs().max() < 1e-5
    assert torch.allclose(method.text_features(), text, atol=1e-6)


def test_prompt_layout_and_only_the_context_trains(components):
    method = built(components)
    prompts = method.model()
    assert prompts.shape[:2] == (7, clip_tiny_context()) and method.model.ctx.shape == (16, 16)
    assert torch.equal(prompts[:, 1:17], method.model.ctx.expand(7, -1, -1))
    assert [n for n, p in method.model.named_parameters()] == ["ctx"]
    csc = built(components, csc=True)
    assert csc.model.ctx.shape == (7, 16, 16)
    with pytest.raises(BenchmarkError, match="unified"):
        build_method("coop", {"csc": True, "ctx_init": "a photo of a"}, components)


def clip_tiny_context() -> int:
    return 24


def test_training_moves_the_context_along_dasslls_schedule(components, data):
    method = build_method("coop", {"n_ctx": 4}, components)
    log, epochs = MemoryLog(), 3
    method.fit(data, recipe=Recipe(epochs=epochs, batch_size=16, input_size=32, seed=0, progress=False, prefetch=0),
               device=CPU, log=log)
    lr0 = method.hparams.lr
    assert log.series("lr") == pytest.approx([1e-5] + [lr0 * 0.5 * (1 + math.cos(math.pi * (e - 1) / epochs))
                                                       for e in range(1, epochs)])
    assert all(math.isfinite(v) for v in log.series("train/loss"))
