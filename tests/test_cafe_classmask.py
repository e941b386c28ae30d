"""cafe_classmask (methods/cafe_classmask.py): with all seven masks equal it is CAFE with one static
mask shared by every face (logits and each loss term); unequal masks change class k's logit only
through mask k; it trains through the shared loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from benchmark.training.method import Batch, Components, MemoryLog
from benchmark.training.plugins import build_method
from benchmark.training.recipe import Recipe

from methods.cafe import diverse_loss, drop_mask, grouped

CPU = torch.device("cpu")


class FakeEncoder(torch.nn.Module):
    dim, id, is_clip = 512, "fake", False

    def forward(self, x):
        return x.flatten(1)[:, :512]


def method_with_features(**hparams):
    method = build_method("cafe_classmask", hparams, Components(encoder=FakeEncoder()))
    method.place(CPU)
    method.model = method.make_model()
    return method


def test_equal_masks_are_cafe_with_one_static_mask():
    method = method_with_features()
    gen = torch.Generator().manual_seed(0)
    shared = torch.randn(512, generator=gen)
    method.model.masks.data.copy_(shared.expand(7, -1))
    f = torch.rand(6, 512, generator=gen) * 3
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    drop = drop_mask(512, 10, __import__("random").Random(0))
    batch = Batch(f, y, np.arange(6), extra={"encoder": f, "drop": drop})
    loss, parts = method.training_step(batch)
    ft = f * torch.sigmoid(shared)  # CAFE's Ft with a mask that ignores the face
    ce = F.cross_entropy(method.model.fc(ft), y)
    groups = grouped(ft)
    sep = F.cross_entropy((groups * drop).amax(-1), y)
    div = diverse_loss(groups.amax(-1), groups.shape[-1], "code")
    assert torch.allclose(parts["ce"], ce) and torch.allclose(parts["sep"], sep) and torch.allclose(parts["div"], div)
    assert torch.allclose(loss, ce + 1.5 * sep + 5.0 * div)


def test_class_k_reads_its_logit_through_mask_k_only():
    method = method_with_features()
    f = torch.rand(2, 512, generator=torch.Generator().manual_seed(1))
    before = method.class_logits(method.masked(f)).detach()
    with torch.no_grad():
        method.model.masks[3] += 1.0
    after = method.class_logits(method.masked(f)).detach()
    changed = (after - before).abs().amax(0) > 0
    assert changed.tolist() == [False, False, False, True, False, False, False]


def test_it_trains_through_the_shared_loop(tmp_path):
    from benchmark.data import DATASETS, decode_split
    from benchmark.models.encoders import build_encoder
    from benchmark.models.specs import EncoderSpec
    from benchmark.training.features import FeatureCache

    data = decode_split(DATASETS.get("synth5/studio").load(None, "val", scale=0.1), 32, cache_dir=tmp_path)
    encoder = build_encoder(EncoderSpec("torchvision:mobilenet_v2:imagenet"))
    method = build_method("cafe_classmask", {"lr": 1e-2, "drop_per_group": 10},
                          Components(encoder=encoder, features=FeatureCache(tmp_path / "f")))
    log = MemoryLog()
    method.fit(data, recipe=Recipe(epochs=2, batch_size=16, input_size=32, seed=0, progress=False, prefetch=0),
               device=CPU, log=log)
    assert not torch.allclose(method.model.masks, torch.zeros_like(method.model.masks))
    probs = method.predict(data)
    assert probs.shape == (len(data), 7) and np.allclose(probs.sum(1), 1, atol=1e-5)
