"""CAFE's pieces on hand-made tensors, and its variants."""

from __future__ import annotations

import random

import numpy as np

import pytest
import torch
from torch import nn

from benchmark.models.backbones import BackboneSpec
from benchmark.models.encoders import EncoderSpec, FrozenEncoder
from benchmark.core.errors import BenchmarkError
from benchmark.training.method import Batch, Components
from benchmark.training.plugins import build_method
from methods.cafe import diverse_loss, drop_mask, group_size, grouped, match_width


def linear_encoder(dim: int = 512, seed: int = 0) -> FrozenEncoder:
    """A deterministic stand-in encoder: flatten a 32x32 input, one linear layer."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(3 * 64, dim))
    return FrozenEncoder(net, dim, EncoderSpec("openclip:stub:random"), "stub")


def test_seven_groups_of_73_and_channel_511_never_pooled():
    assert group_size(512) == 73
    ft = torch.arange(512, dtype=torch.float32).repeat(2, 1)
    groups = grouped(ft)
    assert groups.shape == (2, 7, 73)
    assert groups[0, 0, 0] == 0 and groups[0, 6, -1] == 510
    ft[:, 511] = 1e6  # the unpooled channel cannot win any group's max
    assert torch.equal(grouped(ft).amax(-1)[0], torch.tensor([72.0, 145, 218, 291, 364, 437, 510]))


def test_drop_mask_has_ten_zeros_per_group_and_is_fresh_each_draw():
    rng = random.Random(0)
    last_group_zeros = set()
    masks = []
    for _ in range(200):
        mask = drop_mask(512, 10, rng)
        assert mask.shape == (7, 73)
        zeros = (mask == 0).sum(dim=1)
        assert zeros[:6].tolist() == [10] * 6
        last_group_zeros.add(int(zeros[6]))  # 10 zeros among 74, cut to 73: 9 or 10 remain
        masks.append(mask)
    assert last_group_zeros == {9, 10}
    assert not torch.equal(masks[0], masks[1])


def test_one_drop_mask_shared_by_the_batch_per_step(monkeypatch):
    import methods.cafe as cafe_module

    calls = []
    real = cafe_module.drop_mask

    def recording(width, drops, rng):
        mask = real(width, drops, rng)
        calls.append(mask)
        return mask

    monkeypatch.setattr(cafe_module, "drop_mask", recording)
    method = build_method("cafe", components=Components(BackboneSpec("resnet18", "none"), linear_encoder()))
    method.build(torch.device("cpu"))
    x, y = torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4])
    method.training_step(method.with_extras(Batch(x, y, np.arange(len(y)))))
    method.training_step(method.with_extras(Batch(x, y, np.arange(len(y)))))
    assert len(calls) == 2 and calls[0].shape == (7, 73)  # one (7, g) mask per step, broadcast over B
    assert not torch.equal(calls[0], calls[1])


def test_diverse_loss_normalisers_are_seven_times_apart():
    group_max = torch.tensor([[7.3, 14.6, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 73.0]])
    code = diverse_loss(group_max, 73, "code")
    paper = diverse_loss(group_max, 73, "paper")
    assert code.item() == pytest.approx(1 - (7.3 + 14.6 + 73) / (2 * 7 * 73))
    assert paper.item() == pytest.approx(1 - (7.3 + 14.6 + 73) / (2 * 73))
    assert (1 - paper.item()) == pytest.approx(7 * (1 - code.item()))


def make_cafe(name: str = "cafe", **overrides):
    method = build_method(name, overrides, Components(BackboneSpec("resnet18", "none"), linear_encoder()))
    method.build(torch.device("cpu"))
    method.model.eval()
    return method


def test_sigmoid_mask_lies_in_half_open_unit_half_on_nonnegative_features():
    method = make_cafe()
    with torch.no_grad():
        mask = method.mask(torch.randn(4, 3, 32, 32))
    assert mask.min() >= 0.5 and mask.max() < 1.0


def test_nosigmoid_variant_uses_raw_features():
    method = make_cafe("cafe_nosigmoid")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        raw = method.model["backbone"](x)
        assert torch.equal(method.mask(x), raw)
        assert raw.min() >= 0  # post-ReLU pooled features
    assert method.hparams.use_sigmoid is False and method.hparams.use_sep and method.hparams.use_div


def test_variants_switch_losses_off():
    y = torch.tensor([1, 2])
    x = torch.randn(2, 3, 32, 32)
    for name, parts in [("cafe", {"ce", "sep", "div"}), ("cafe_mask_sep", {"ce", "sep"}), ("cafe_mask", {"ce"})]:
        method = make_cafe(name)
        assert set(method.training_step(method.with_extras(Batch(x, y, np.arange(len(y)))))[1]) == parts
    with pytest.raises(BenchmarkError, match="use_mask=False is the plain backbone"):
        make_cafe("cafe", use_mask=False)
    with pytest.raises(BenchmarkError, match="unknown hyperparameter"):
        make_cafe("cafe", sep_wieght=1.0)


def test_predict_uses_the_fc_head_on_masked_clip_features(tmp_path):
    import numpy as np

    from benchmark.data.cache import DecodedSplit
    from benchmark.training.augment import normalize

    method = make_cafe()
    images = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    data = DecodedSplit(images, np.arange(6) % 7, np.arange(6), "t", "test", "fp", 32, {}, tmp_path)
    probs = method.predict(data)
    with torch.no_grad():
        x = normalize(torch.from_numpy(images))
        ft = method.components.encoder(x) * torch.sigmoid(method.model["backbone"](x))
        expected = torch.softmax(method.model["fc"](ft), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        method.model["fc"].bias += torch.tensor([0, 0, 0, 0, 0, 0, 100.0])
    assert (method.predict(data).argmax(1) == 6).all()  # the FC decides the prediction


def test_width_rule_averages_channel_windows():
    feat = torch.arange(8, dtype=torch.float32).reshape(1, 8)
    assert match_width(feat, 4).tolist() == [[0.5, 2.5, 4.5, 6.5]]
    method = build_method("cafe", components=Components(BackboneSpec("resnet18", "none"), linear_encoder(dim=1280)))
    method.build(torch.device("cpu"))
    assert method.width == 512 and method.model["fc"].in_features == 512


def test_clip_ft_layer_is_1024_to_7_for_two_512_features():
    method = build_method("clip_ft", components=Components(BackboneSpec("resnet18", "none"), linear_encoder()))
    method.build(torch.device("cpu"))
    assert (method.model["fc"].in_features, method.model["fc"].out_features) == (1024, 7)


def test_methods_needing_an_encoder_say_so():
    with pytest.raises(BenchmarkError, match="needs a frozen encoder"):
        build_method("clip_ft", components=Components(BackboneSpec("resnet18", "none"), None))


def test_cached_clip_features_pick_mirrored_rows_for_flipped_samples():
    import numpy as np

    method = make_cafe("cafe", clip_features="cached")
    plain = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 512)
    method._train_features = (plain, -plain)
    batch = Batch(torch.zeros(3, 3, 32, 32), torch.zeros(3, dtype=torch.long), np.array([3, 7, 1]),
                  torch.tensor([False, True, False]))
    feats = method.encoder_features(batch)
    assert feats[:, 0].tolist() == [3.0, -7.0, 1.0]
    with pytest.raises(BenchmarkError, match="clip_features"):
        make_cafe("cafe", clip_features="sometimes")


def test_cached_mode_runs_the_encoder_only_to_precompute(studio, components, tmp_path):
    from benchmark.training.features import FeatureCache
    from benchmark.training.recipe import Recipe
    from benchmark.training.method import MemoryLog

    # A fresh feature cache, so that nothing is precomputed by an earlier test.
    components = Components(components.backbone, components.encoder, FeatureCache(tmp_path / "features"))
    calls = []
    hook = components.encoder.register_forward_hook(lambda m, a, o: calls.append(len(a[0])))
    try:
        method = build_method("cafe", {"clip_features": "cached"}, components)
        method.fit(studio[0], recipe=Recipe(epochs=1, batch_size=32, input_size=studio[0].size, progress=False),
                   device=torch.device("cpu"), log=MemoryLog())
    finally:
        hook.remove()
    # Only the two precomputing passes (plain and mirrored) over the training split; no call per step.
    assert sum(calls) == 2 * len(studio[0])


def test_cached_mode_changes_the_job_hash(tmp_path):
    from benchmark.jobs.plan import expand, plan_from
    from benchmark.jobs.protocol import load_protocol

    from .test_runner import write_protocol

    path = write_protocol(tmp_path)
    online = load_protocol(str(path), {"methods": '["cafe"]'})
    cached = load_protocol(str(path), {"methods": '["cafe"]', "hparams.cafe.clip_features": "cached"})
    jobs_online = expand(online, ["cafe"], plan_from(online, None, None))
    jobs_cached = expand(cached, ["cafe"], plan_from(cached, None, None))
    assert jobs_cached[0].hparams["clip_features"] == "cached"
    assert {j.hash for j in jobs_online}.isdisjoint({j.hash for j in jobs_cached})
    # The numerics and data-path choices change the numbers too, so they are in the hash.
    for key, value in {"recipe.precision": "bf16", "recipe.data_path": "per_sample", "recipe.channels_last": "false",
                       "recipe.compile": "true"}.items():
        other = load_protocol(str(path), {"methods": '["cafe"]', key: value})
        assert {j.hash for j in jobs_online}.isdisjoint({j.hash for j in expand(other, ["cafe"], plan_from(other, None, None))}), key
