"""Backbone and encoder weights: strict loading that names keys, digests, fast offline failure."""

from __future__ import annotations

import json
import sys
import time

import pytest
import torch
import torchvision

from benchmark.models import weights as weights_module
from benchmark.models.backbones import BackboneSpec, build_backbone
from benchmark.models.encoders import EncoderSpec, build_encoder
from benchmark.models.weights import WeightsError


def save_msceleb_like(path, prefix: str = "", drop: str | None = None, extra: str | None = None):
    state = torchvision.models.resnet18(weights=None).state_dict()  # torchvision keys, 1000-way fc
    state = {prefix + k: v for k, v in state.items() if k != drop}
    if extra:
        state[extra] = torch.zeros(1)
    torch.save({"state_dict": state, "epoch": 3}, path)
    return path


def test_msceleb_checkpoint_loads_strictly_and_drops_fc(tmp_path):
    path = save_msceleb_like(tmp_path / "resnet18_msceleb.pth")
    backbone = build_backbone(BackboneSpec("resnet18", "msceleb", str(path)))
    expected = torch.load(path, weights_only=True)["state_dict"]["layer4.1.bn2.weight"]
    assert torch.equal(backbone.trunk[7][1].bn2.weight, expected)
    assert backbone.dim == 512 and len(backbone.weights_digest) == 16
    assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    assert not any("fc" in name for name, _ in backbone.named_parameters())


def test_dataparallel_prefix_is_stripped(tmp_path):
    path = save_msceleb_like(tmp_path / "dp.pth", prefix="module.")
    assert build_backbone(BackboneSpec("resnet18", "msceleb", str(path))).dim == 512


def test_wrong_checkpoint_names_missing_and_unexpected_keys(tmp_path):
    path = save_msceleb_like(tmp_path / "bad.pth", drop="layer1.0.conv1.weight", extra="head.weight")
    with pytest.raises(WeightsError, match=r"missing layer1.0.conv1.weight; unexpected head.weight"):
        build_backbone(BackboneSpec("resnet18", "msceleb", str(path)))


def test_msceleb_without_path_says_what_to_do():
    with pytest.raises(WeightsError, match="resnet18_msceleb.pth"):
        build_backbone(BackboneSpec("resnet18", "msceleb", None))


class Evil:
    """Any non-tensor object in a checkpoint must not be unpickled."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"a": Evil()}}, path)
    with pytest.raises(WeightsError, match="weights_only=True"):
        build_backbone(BackboneSpec("resnet18", "msceleb", str(path)))


def test_bundled_mobilenet_weights_are_verified_and_used():
    backbone = build_backbone(BackboneSpec("mobilenet_v2", "imagenet"))
    assert backbone.dim == 1280 and backbone.weights_digest.startswith("b0353104")
    encoder = build_encoder(EncoderSpec("torchvision:mobilenet_v2:imagenet"))
    assert encoder.dim == 1280 and encoder.weights_digest.startswith("b0353104")
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training  # a frozen encoder stays in eval mode


def test_bundled_file_with_wrong_digest_is_rejected(tmp_path, monkeypatch):
    package = tmp_path / "fakeweights"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), package / "weights/m.pth")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(weights_module.BUNDLED, "mobilenet_v2", ("fakeweights", "weights/m.pth", "b0353104"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsError, match="sha256 does not start with b0353104"):
        build_backbone(BackboneSpec("mobilenet_v2", "imagenet"))
    sys.modules.pop("fakeweights", None)


def test_offline_missing_weights_fail_fast_and_say_where(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(weights_module, "network_reachable", lambda url, timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(WeightsError, match=r"no network and no local copy of torchvision resnet18.*resnet18-f37072fd.pth"):
        build_backbone(BackboneSpec("resnet18", "imagenet"))
    import benchmark.models.encoders as enc

    monkeypatch.setattr(enc, "network_reachable", lambda url, timeout=3.0: False)
    with pytest.raises(WeightsError, match=r"open_clip ViT-B-32 'openai'.*--set encoder.path=FILE"):
        build_encoder(EncoderSpec("openclip:ViT-B-32:openai"))
    assert time.perf_counter() - start < 10


def test_network_probe_answers_quickly_when_nothing_listens():
    start = time.perf_counter()
    assert weights_module.network_reachable("https://127.0.0.1", timeout=2.0) is False  # loopback, port 443 closed
    assert time.perf_counter() - start < 5


TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture
def tiny_clip(tmp_path):
    import open_clip

    config = tmp_path / "tiny-test-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    return "tiny-test-clip"


def test_openclip_random_architecture_and_load_from_file(tmp_path, tiny_clip):
    random_encoder = build_encoder(EncoderSpec(f"openclip:{tiny_clip}:random"))
    assert random_encoder.dim == 32 and random_encoder.weights_digest == "random"
    path = tmp_path / "clip_weights.pt"
    torch.save(random_encoder.clip_model.state_dict(), path)
    loaded = build_encoder(EncoderSpec(f"openclip:{tiny_clip}:openai", path=str(path)))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), random_encoder(x))
    assert loaded.weights_digest == weights_module.sha256_file(path)[:16]
    broken = {k: v for k, v in random_encoder.clip_model.state_dict().items() if not k.startswith("visual.proj")}
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(WeightsError, match=r"missing visual.proj"):
        build_encoder(EncoderSpec(f"openclip:{tiny_clip}:openai", path=str(tmp_path / "broken.pt")))
