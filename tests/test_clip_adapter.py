"""CLIP-Adapter (methods/clip_adapter.py) on a tiny random open_clip model: ratio 0 is zero-shot
with its one template; one float64 step against a transcription of the released `Adapter` and
`CustomCLIP.forward` (logits, loss, adapter weights after SGD); only the adapter trains; Dassl's
warm-up + cosine per epoch; the training transform is CLIP's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.core.labels import CLASSES
from benchmark.training.method import Batch, MemoryLog
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
    method = build_method("clip_adapter", hparams, components)
    method.build(CPU, 32)
    return method


def test_ratio_zero_is_zero_shot_with_its_template(components, data):
    from benchmark.models.clip_text import CLASS_NAMES, zero_shot_weights

    method = built(components, ratio=0.0)
    f = F.normalize(components.features.get(components.encoder, data, CPU, policy="clip"), dim=-1)
    words = {c: (n,) for c, n in zip(CLASSES, CLASS_NAMES)}
    text = zero_shot_weights(components.encoder, ("a photo of a {} face.",), CPU, words)
    scale = components.encoder.clip_model.logit_scale.exp()
    assert np.allclose(method.predict(data), torch.softmax(scale * f @ text.T, 1).numpy(), atol=1e-6)


class UpstreamAdapter(nn.Module):
    """clip_adapter.py's Adapter, transcribed."""

    def __init__(self, c_in, reduction=4):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(c_in, c_in // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(c_in // reduction, c_in, bias=False), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.fc(x)


def upstream_logits(adapter, image_features, text_features, logit_scale):
    """CustomCLIP.forward after the image encoder, transcribed."""
    x = adapter(image_features)
    ratio = 0.2
    image_features = ratio * x + (1 - ratio) * image_features
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    return logit_scale.exp() * image_features @ text_features.t()


def test_one_step_equals_the_released_module_in_float64(components):
    method = built(components)
    method.model.double()
    reference = UpstreamAdapter(components.encoder.dim).double()
    reference.load_state_dict(method.model.adapter.state_dict())
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(6, components.encoder.dim, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    ours = method.classify(f)
    theirs = upstream_logits(reference, f, method.model.text, components.encoder.clip_model.logit_scale.double())
    assert (ours - theirs).abs().max() < 1e-12
    settings = method.optimizer_settings()
    for model, logits in ((method.model.adapter, ours), (reference, theirs)):
        opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                              weight_decay=settings.weight_decay)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
    for a, b in zip(method.model.adapter.parameters(), reference.parameters()):
        assert (a - b).abs().max() < 1e-15


def test_only_the_adapter_trains_and_clip_stays_in_eval(components):
    method = built(components)
    groups = method.param_groups()
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in method.model.adapter.parameters()}
    method.train_mode(True)
    assert not components.encoder.training and not any(p.requires_grad for p in components.encoder.parameters())


def test_dassl_warmup_then_cosine_per_epoch(components, data):
    method = build_method("clip_adapter", {}, components)
    log = MemoryLog()
    epochs = 3
    method.fit(data, recipe=Recipe(epochs=epochs, batch_size=16, input_size=32, seed=0, progress=False, prefetch=0),
               device=CPU, log=log)
    lr0 = method.hparams.lr
    expected = [1e-5] + [lr0 * 0.5 * (1 + math.cos(math.pi * (e - 1) / epochs)) for e in range(1, epochs)]
    assert log.series("lr") == pytest.approx(expected)
    assert all(np.isfinite(log.series("train/loss")))


def test_training_images_are_cropped_resized_bicubic_and_clip_normalised(components):
    from benchmark.training.augment import imagenet_normalize
    from benchmark.training.clip_input import CLIP_MEAN, CLIP_STD, random_resized_crop

    flat = torch.full((2, 3, 16, 16), 0.5)
    out = random_resized_crop(imagenet_normalize(flat.clone()), (32, 32), (0.08, 1.0))
    expected = (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert out.shape == (2, 3, 32, 32) and torch.allclose(out[:, :, 5, 5], expected.expand(2, 3), atol=1e-5)
    batch = Batch(imagenet_normalize(torch.rand(2, 3, 32, 32)), torch.tensor([0, 1]), np.array([0, 1]))
    loss, parts = built(components).training_step(batch)
    assert torch.isfinite(loss) and "ce" in parts


def test_each_clip_method_runs_clip_in_its_authors_dtype_under_auto_on_cuda():
    """precision = "auto" is each authors' arithmetic: CLIP in fp16 on CUDA (the OpenAI package's
    default: CAFE, CoOp, Tip-Adapter) except where the released code casts it to fp32
    (CLIP-Adapter, WiSE-FT, LP-FT); "bf16" and "fp32" are the same for every method."""
    import types

    from benchmark.training.numerics import Numerics
    from benchmark.training.method import Components
    from benchmark.training.plugins import load_plugins

    registry = load_plugins()
    cuda = torch.device("cuda")
    encoder = types.SimpleNamespace(is_clip=True)
    expected_fp32 = {"clip_adapter", "wise_ft", "lp_ft"}
    for name in ("cafe", "clip_ft", "coop", "tip_adapter", "tip_adapter_f", "clip_probe", "clip_zeroshot",
                 "cafe_classmask", *expected_fp32):
        method = registry.get(name).cls.__new__(registry.get(name).cls)
        method.components = Components(encoder=encoder)
        for precision, dtype in (("auto", torch.float32 if name in expected_fp32 else torch.float16),
                                 ("fp32", torch.float32), ("bf16", torch.bfloat16)):
            method.numerics = Numerics.resolve(cuda, precision)
            assert method.encoder_dtype() == dtype, (name, precision)
        method.numerics = Numerics.resolve(torch.device("cpu"), "auto")
        assert method.encoder_dtype() == torch.float32, name  # on the CPU, fp32 for all
