"""MixStyle (benchmark.training.extensions.mixstyle.py) against a transcription of Dassl's
`MixStyle.forward` (random mixing) with seeded Python and torch generators; where it is placed
(after ResNet's layer1-3, once per stage per forward, never in evaluation); the recipe switch."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from benchmark.core.errors import BenchmarkError
from benchmark.models.backbones import BackboneSpec, build_backbone
from benchmark.training.recipe import Recipe
from benchmark.training.extensions.mixstyle import MixStyle, insert


def dassl_forward(x: torch.Tensor, p: float, alpha: float, eps: float = 1e-6) -> torch.Tensor:
    """dassl/modeling/ops/mixstyle.py, MixStyle.forward with mix='random', transcribed."""
    if random.random() > p:
        return x
    B = x.size(0)
    mu = x.mean(dim=[2, 3], keepdim=True)
    var = x.var(dim=[2, 3], keepdim=True)
    sig = (var + eps).sqrt()
    mu, sig = mu.detach(), sig.detach()
    x_normed = (x - mu) / sig
    lmda = torch.distributions.Beta(alpha, alpha).sample((B, 1, 1, 1)).to(x.device)
    perm = torch.randperm(B)
    mu2, sig2 = mu[perm], sig[perm]
    return x_normed * (sig * lmda + sig2 * (1 - lmda)) + (mu * lmda + mu2 * (1 - lmda))


@pytest.mark.parametrize("seed", range(6))
def test_forward_equals_dassls_with_the_same_draws(seed):
    x = torch.randn(8, 4, 5, 5, generator=torch.Generator().manual_seed(100 + seed))
    random.seed(seed)
    torch.manual_seed(seed)
    expected = dassl_forward(x, 0.5, 0.1)
    random.seed(seed)
    torch.manual_seed(seed)
    got = MixStyle(0.5, 0.1).train()(x)
    assert torch.equal(got, expected)


def test_identity_when_the_draw_exceeds_p_and_in_evaluation():
    x = torch.randn(4, 3, 6, 6)
    random.seed(0)
    draw = random.random()  # 0.844: above p = 0.5, so the batch passes unchanged
    random.seed(0)
    assert draw > 0.5 and MixStyle(0.5).train()(x) is x
    assert MixStyle(1.0).eval()(x) is x


def test_statistics_are_detached():
    x = torch.randn(6, 2, 4, 4, requires_grad=True)
    torch.manual_seed(3)
    out = MixStyle(1.0, 0.1).train()(x)
    out.sum().backward()
    # With mu and sigma detached, d out / d x = sigma_mix / sigma, the same for every pixel of a channel.
    per_channel = x.grad.flatten(2)
    assert torch.allclose(per_channel, per_channel[..., :1].expand_as(per_channel))


def test_placed_after_resnets_layer1_to_3_and_never_in_evaluation():
    backbone = build_backbone(BackboneSpec("resnet18", "none"))
    keys = list(backbone.state_dict())
    insert(nn.ModuleDict({"backbone": backbone}), "1,2,3", 1.0, 0.1)
    assert list(backbone.state_dict()) == keys  # no parameter or buffer added: checkpoints unchanged
    seen = []
    backbone.mixstyle.register_forward_hook(lambda m, inputs, output: seen.append(tuple(inputs[0].shape[1:3])))
    backbone.train()(torch.randn(2, 3, 64, 64))
    assert seen == [(64, 16), (128, 8), (256, 4)]  # layer1, layer2, layer3 outputs (channels, side)
    seen.clear()
    backbone.eval()(torch.randn(2, 3, 64, 64))
    assert seen == [(64, 16), (128, 8), (256, 4)] and not backbone.mixstyle.training  # called, identity


def test_the_recipe_switch_and_what_it_refuses():
    from benchmark.data import DATASETS, decode_split
    from benchmark.training.method import Components, MemoryLog
    from benchmark.training.plugins import build_method

    data = decode_split(DATASETS.get("synth5/studio").load(None, "test", scale=0.02), 32)
    method = build_method("erm", {}, Components(BackboneSpec("mobilenet_v2", "none")))
    log = MemoryLog()
    method.fit(data, recipe=Recipe(epochs=1, batch_size=4, input_size=32, seed=2, progress=False, prefetch=0,
                                   mixstyle="1,2,3"), device=torch.device("cpu"), log=log)
    assert log.series("train/loss")
    with pytest.raises(BenchmarkError, match=r"recipe.mixstyle = '3,1': expected stage numbers in increasing order"):
        Recipe(mixstyle="3,1")
    with pytest.raises(BenchmarkError, match="has 4 stages after its stem"):
        insert(nn.ModuleDict({"b": build_backbone(BackboneSpec("resnet18", "none"))}), "1,5", 0.5, 0.1)
    from .test_backbones import register_tiny_models

    register_tiny_models()
    with pytest.raises(BenchmarkError, match="a transformer has token sequences"):
        insert(nn.ModuleDict({"b": build_backbone(BackboneSpec("timm:test_vit_micro", "none"))}), "1", 0.5, 0.1)
