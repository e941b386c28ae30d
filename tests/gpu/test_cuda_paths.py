"""Every method trained and evaluated on the device in each precision, channels_last and
compiled; the feature cache's dtypes; pinned copies; no host sync inside a training step;
the same job twice gives the same predictions."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from benchmark.training.numerics import Numerics, host_batch, to_device_batch
from benchmark.training.recipe import Recipe
from benchmark.training.method import MemoryLog
from benchmark.training.plugins import build_method, load_plugins
from benchmark.training.trained_method import TrainedMethod

from .conftest import DEVICE, ON_CUDA

METHODS = load_plugins()
ALL_METHODS = sorted(METHODS.names())
TRAINED = [m for m in ALL_METHODS if issubclass(METHODS.get(m).cls, TrainedMethod)]
PRECISIONS = ["auto", "fp32", "bf16"]


def recipe(setting, **changes) -> Recipe:
    base = Recipe(epochs=1, batch_size=16, input_size=setting["size"], seed=5, progress=False)
    return dataclasses.replace(base, **changes)


def fit_and_predict(name, components, splits, rec, **hparams):
    train, test = splits
    method = build_method(name, hparams or None, components=components)
    log = MemoryLog()
    method.fit(train, recipe=rec, device=DEVICE, log=log)
    probs = method.predict(test)
    return method, log, probs


def check_probs(probs, test):
    assert probs.shape == (len(test), 7)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-4)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_trains_and_predicts_channels_last(name, precision, setting, components, splits, report):
    if name == "clip_zeroshot" and not ON_CUDA:
        pytest.skip("the CPU dry run's torchvision encoder has no text tower")
    start = time.perf_counter()
    method, log, probs = fit_and_predict(name, components, splits, recipe(setting, precision=precision,
                                                                          channels_last=True))
    check_probs(probs, splits[1])
    numerics = method.numerics
    assert numerics.precision == precision
    if isinstance(method, TrainedMethod):
        losses = log.series("train/loss")
        assert len(losses) == 1 and np.isfinite(losses[0])
        conv = next(p for p in method.model.parameters() if p.dim() == 4)
        assert conv.is_contiguous(memory_format=torch.channels_last)
        assert conv.device.type == DEVICE.type and conv.dtype == torch.float32  # autocast, not cast weights
    if ON_CUDA and method.components.encoder.clip_model is not None:
        # "auto": fp16 CLIP on CUDA, as the authors'; bf16 when asked; fp32 weights kept exactly for fp32.
        expected = {"auto": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        assert method.components.encoder.dtype == expected
    report(f"train_predict[{name}-{precision}]", seconds=time.perf_counter() - start,
           autocast=str(numerics.autocast_dtype), encoder_dtype=str(method.components.encoder.dtype))


def test_feature_cache_round_trips_each_encoder_dtype(setting, components, splits, report):
    from benchmark.training.features import FeatureCache

    _, test = splits
    encoder = components.encoder
    cache = components.features
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if ON_CUDA else [])
    paths = set()
    for dtype in dtypes:
        placed = encoder.to_device(DEVICE, dtype)
        computed = cache.get(placed, test, DEVICE)
        assert computed.dtype == torch.float32 and computed.device.type == DEVICE.type
        cache.forget()
        reread = FeatureCache(cache.root).get(placed, test, DEVICE)  # from the file written above
        torch.testing.assert_close(reread, computed, rtol=0, atol=0)
        paths.add(cache.path(placed, test))
        report(f"feature_cache[{dtype}]", abs_mean=float(computed.abs().mean()))
    assert len(paths) == len(dtypes)  # one file per dtype: fp16 features never stand in for fp32
    encoder.to_device(DEVICE, torch.float32)


def test_pinned_non_blocking_copies_arrive_intact():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 255, (16, 8, 8, 3), dtype=np.uint8) for _ in range(8)]
    assert host_batch(arrays[0], DEVICE).is_pinned() == ON_CUDA
    copies = [to_device_batch(a, DEVICE) for a in arrays]  # queued back to back, not waited for
    for array, copy in zip(arrays, copies):
        assert copy.device.type == DEVICE.type
        np.testing.assert_array_equal(copy.cpu().numpy(), array)


@pytest.mark.skipif(not ON_CUDA, reason="host synchronisation is a CUDA notion")
@pytest.mark.parametrize("name", TRAINED)
@pytest.mark.parametrize("data_on_device", ["never", "always"])
def test_a_training_step_never_waits_for_the_gpu(name, data_on_device, setting, components, splits, no_host_sync):
    """The whole epoch's loop runs under torch's sync debug mode "error" (the no_host_sync fixture)."""
    method = build_method(name, components=components)
    method.fit(splits[0], recipe=recipe(setting, data_on_device=data_on_device, sync_every=10**6), device=DEVICE,
               log=MemoryLog())


@pytest.mark.skipif(not ON_CUDA, reason="the CPU's reproducibility is tested in tests/test_training.py")
def test_the_same_job_twice_gives_the_same_predictions(setting, components, splits, report):
    """Default cuDNN settings (autotuning off, non-deterministic algorithms allowed): the
    difference is measured and must stay within 1e-3 in probability; with
    torch.backends.cudnn.deterministic the two runs must be identical."""
    rec = recipe(setting, epochs=2)
    first = fit_and_predict("cafe", components, splits, rec)[2]
    second = fit_and_predict("cafe", components, splits, rec)[2]
    default_diff = float(np.abs(first - second).max())
    old = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    try:
        third = fit_and_predict("cafe", components, splits, rec)[2]
        fourth = fit_and_predict("cafe", components, splits, rec)[2]
    finally:
        torch.backends.cudnn.deterministic = old
    deterministic_diff = float(np.abs(third - fourth).max())
    report("same_job_twice", default_max_abs_diff=default_diff, deterministic_max_abs_diff=deterministic_diff,
           cudnn_benchmark=torch.backends.cudnn.benchmark, cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
           matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    assert default_diff <= 1e-3
    assert deterministic_diff == 0.0


def test_execution_resolves_auto_for_this_device():
    numerics = Numerics.resolve(DEVICE, "auto")
    if ON_CUDA:
        assert numerics.autocast_dtype is None and numerics.encoder_dtype == torch.float16
    else:
        assert numerics.autocast_dtype is None and numerics.encoder_dtype == torch.float32


# Last: the slowest (compilation), so a time limit cuts these first.
@pytest.mark.skipif(not ON_CUDA, reason="torch.compile is exercised on CUDA (inductor on this CPU takes minutes)")
@pytest.mark.parametrize("name", TRAINED)
def test_every_trained_method_trains_and_predicts_compiled(name, setting, components, splits, report):
    start = time.perf_counter()
    method, log, probs = fit_and_predict(name, components, splits, recipe(setting, compile=True))
    check_probs(probs, splits[1])
    assert np.isfinite(log.series("train/loss")).all()
    # The compiled backbone's weights keep their names: a compiled job's state_dict loads uncompiled.
    plain = build_method(name, components=components)
    plain.load_state_dict(method.state_dict(), device=DEVICE)
    report(f"compile[{name}]", seconds=time.perf_counter() - start)
