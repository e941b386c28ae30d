"""The CUDA suite: every method's training and prediction on a GPU, in each precision, laid out
channels_last and compiled, plus the copies and caches that only CUDA exercises.

Skipped where torch sees no GPU. `BENCHMARK_GPU_TESTS_DEVICE=cpu` runs it on the CPU instead,
with a small encoder and input size and without the compile tests (the device script's dry run
uses this, so the suite's own code is checked in CI). `BENCHMARK_GPU_REPORT=FILE` collects the
measured figures (tolerances, timings) of the tests as JSON lines.
"""

from __future__ import annotations

import json
import os

# Deterministic cuBLAS needs this before the first cuBLAS call (the determinism test uses it).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402

DEVICE = torch.device(os.environ.get("BENCHMARK_GPU_TESTS_DEVICE", "cuda"))
ON_CUDA = DEVICE.type == "cuda"


def pytest_collection_modifyitems(config, items):
    if ON_CUDA and not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA device (BENCHMARK_GPU_TESTS_DEVICE=cpu runs the suite on the CPU)")
        for item in items:
            if "tests/gpu" in str(item.fspath).replace(os.sep, "/"):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def setting():
    """Encoder, backbone and input size: the paper's on CUDA (CLIP ViT-B/32 with random weights,
    so its fp16 path runs; ResNet-18), small offline ones on the CPU dry run."""
    if ON_CUDA:
        pytest.importorskip("open_clip")
        return {"encoder": "openclip:ViT-B-32:random", "backbone": ("resnet18", "none"), "size": 224}
    return {"encoder": "torchvision:mobilenet_v2:imagenet", "backbone": ("mobilenet_v2", "imagenet"), "size": 32}


@pytest.fixture(scope="session")
def encoder(setting):
    from benchmark.models.encoders import EncoderSpec, build_encoder

    return build_encoder(EncoderSpec(setting["encoder"]))


@pytest.fixture(scope="session")
def splits(setting, tmp_path_factory):
    """A small synth5/wild train and test split decoded at the setting's size."""
    from benchmark.data import DATASETS, decode_split

    reader = DATASETS.get("synth5/wild")
    cache = tmp_path_factory.mktemp("gpu-cache")
    train = decode_split(reader.load(None, "train", scale=0.03), setting["size"], cache_dir=cache)
    test = decode_split(reader.load(None, "test", scale=0.1), setting["size"], cache_dir=cache)
    return train, test


@pytest.fixture
def components(setting, encoder, tmp_path):
    from benchmark.models.backbones import BackboneSpec
    from benchmark.training.features import FeatureCache
    from benchmark.training.method import Components

    return Components(BackboneSpec(*setting["backbone"]), encoder, FeatureCache(tmp_path / "features"))


@pytest.fixture(scope="session")
def report():
    """record(test, **figures): one JSON line per call in $BENCHMARK_GPU_REPORT (if set)."""
    path = os.environ.get("BENCHMARK_GPU_REPORT")

    def record(test: str, **figures) -> None:
        if path:
            with open(path, "a") as fh:
                fh.write(json.dumps({"test": test, "device": str(DEVICE), **figures}, default=str) + "\n")

    return record


@pytest.fixture
def no_host_sync(monkeypatch):
    """On CUDA, run every training epoch's loop (reading, copying, augmenting, the step, the loss
    bookkeeping) under torch's sync debug mode "error": any host synchronisation in it raises.
    A no-op on the CPU."""
    if not ON_CUDA:
        return
    from benchmark.training import trainer

    real_batches = trainer.epoch_batches

    def watched_batches(*args, **kwargs):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield from real_batches(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(trainer, "epoch_batches", watched_batches)
