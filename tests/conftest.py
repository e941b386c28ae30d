"""Shared test set-up: every test gets its own cache and results folders (the generated synth5
domains, identical for all, are shared)."""

from __future__ import annotations

import pytest

SIZE = 48  # input size of the short training runs


@pytest.fixture(scope="session")
def synth5_files(tmp_path_factory):
    """One folder of generated synth5 domains for the whole session: a domain file depends only on
    its generator version, seed and scale, and generating them again in every test cost ~50 s."""
    return tmp_path_factory.mktemp("synth5")


@pytest.fixture(autouse=True)
def isolated_outputs(tmp_path_factory, monkeypatch, synth5_files):
    out = tmp_path_factory.mktemp("results")
    monkeypatch.setenv("BENCHMARK_RESULTS", str(out))
    monkeypatch.setenv("BENCHMARK_CACHE", str(out / "cache"))
    (out / "cache").mkdir()
    (out / "cache" / "synth5").symlink_to(synth5_files, target_is_directory=True)
    monkeypatch.setenv("BENCHMARK_SLOTS", str(out / "core-slots"))  # a test's jobs share no slot with others
    monkeypatch.delenv("FER_DATA_ROOT", raising=False)
    return out


@pytest.fixture(scope="session")
def studio(tmp_path_factory):
    """A small synth5/studio train and test split, decoded at SIZE px (shared by the training tests)."""
    import os

    from benchmark.data import DATASETS, decode_split

    cache = tmp_path_factory.mktemp("studio-cache")
    reader = DATASETS.get("synth5/studio")
    old = os.environ.get("BENCHMARK_CACHE")
    os.environ["BENCHMARK_CACHE"] = str(cache)
    try:
        train = decode_split(reader.load(None, "train", scale=0.4), SIZE)
        test = decode_split(reader.load(None, "test", scale=0.4), SIZE)
    finally:
        if old is None:
            os.environ.pop("BENCHMARK_CACHE", None)
        else:
            os.environ["BENCHMARK_CACHE"] = old
    return train, test


@pytest.fixture(scope="session")
def components(tmp_path_factory):
    """MobileNetV2 ImageNet as frozen encoder and trainable backbone: the weights that exist offline."""
    from benchmark.models.backbones import BackboneSpec
    from benchmark.models.encoders import EncoderSpec, build_encoder
    from benchmark.training.features import FeatureCache
    from benchmark.training.method import Components

    encoder = build_encoder(EncoderSpec("torchvision:mobilenet_v2:imagenet"))
    return Components(BackboneSpec("mobilenet_v2", "imagenet"), encoder,
                      FeatureCache(tmp_path_factory.mktemp("features")))


@pytest.fixture(scope="session")
def clip_components(tmp_path_factory):
    """Components around the tiny random open_clip model with a text tower (tests/clip_tiny.py)
    and a feature cache of their own."""
    from benchmark.training.features import FeatureCache
    from benchmark.training.method import Components

    from . import clip_tiny

    return Components(encoder=clip_tiny.encoder(), features=FeatureCache(tmp_path_factory.mktemp("clip-features")))


@pytest.fixture(scope="session")
def studio_val32(tmp_path_factory):
    """synth5/studio's validation split at 10%, decoded at 32 px (the tiny CLIP's input size)."""
    from benchmark.data import DATASETS, decode_split

    return decode_split(DATASETS.get("synth5/studio").load(None, "val", scale=0.1), 32,
                        cache_dir=tmp_path_factory.mktemp("studio-val32"))
