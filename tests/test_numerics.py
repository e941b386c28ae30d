"""The numerics policy (precision, layout, compilation) and the per-sample reference data path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.core.errors import BenchmarkError
from benchmark.training.numerics import Numerics
from benchmark.training.recipe import Recipe
from benchmark.training.method import MemoryLog
from benchmark.training.plugins import build_method

from .conftest import SIZE

CPU = torch.device("cpu")


def fit_predict(name, studio, components, **recipe):
    train, test = studio
    method = build_method(name, {"lr": 2e-3}, components=components)
    method.fit(train, recipe=Recipe(epochs=1, batch_size=32, input_size=SIZE, seed=3, progress=False, **recipe),
               device=CPU, log=MemoryLog())
    return method, method.predict(test)


def test_precision_policy_per_device():
    cpu_auto = Numerics.resolve(CPU)
    assert cpu_auto.autocast_dtype is None and cpu_auto.encoder_dtype_for(True) == torch.float32
    cuda_auto = Numerics.resolve(torch.device("cuda"))  # the authors': trainable model fp32, CLIP fp16
    assert cuda_auto.autocast_dtype is None and cuda_auto.encoder_dtype_for(True) == torch.float16
    assert cuda_auto.encoder_dtype_for(False) == torch.float32  # torchvision encoders stay fp32
    bf16 = Numerics.resolve(CPU, "bf16")
    assert bf16.autocast_dtype == torch.bfloat16 and bf16.encoder_dtype_for(False) == torch.bfloat16
    assert Numerics.resolve(torch.device("cuda"), "fp32").autocast_dtype is None
    with pytest.raises(BenchmarkError, match="recipe.precision = 'fp16'"):
        Recipe(precision="fp16")
    with pytest.raises(BenchmarkError, match="recipe.data_path = 'disk'"):
        Recipe(data_path="disk")
    with pytest.raises(BenchmarkError, match="recipe.loader_workers = -1"):
        Recipe(loader_workers=-1)


def test_encoder_gets_its_exact_fp32_weights_back_after_bf16(components, studio):
    encoder = components.encoder
    original = {k: v.clone() for k, v in encoder.state_dict().items()}
    fp32_path = components.features.path(encoder, studio[1])
    encoder.to_device(CPU, torch.bfloat16)
    try:
        assert encoder.dtype == torch.bfloat16
        assert components.features.path(encoder, studio[1]) != fp32_path  # bf16 features are cached apart
    finally:
        encoder.to_device(CPU, torch.float32)
    assert encoder.dtype == torch.float32
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, original[key]), key


@pytest.mark.slow
def test_bf16_training_on_cpu_is_reproducible(components, tmp_path):
    # 96 training and 40 test images (three batches): bf16 matmuls are 6-10x slower than fp32 on
    # CPUs without AVX512-BF16, the frozen encoder's features included.
    from benchmark.data import DATASETS, decode_split

    reader = DATASETS.get("synth5/studio")
    small = tuple(decode_split(reader.load(None, split, scale=0.08), SIZE, cache_dir=tmp_path) for split in ("train", "test"))
    try:
        method, first = fit_predict("cafe", small, components, precision="bf16")
        assert method.numerics.autocast_dtype == torch.bfloat16 and components.encoder.dtype == torch.bfloat16
        _, second = fit_predict("cafe", small, components, precision="bf16")
    finally:
        components.encoder.to_device(CPU, torch.float32)  # the encoder is shared with other tests
    np.testing.assert_array_equal(first, second)
    assert np.isfinite(first).all()


def test_channels_last_changes_layout_not_predictions(studio, components):
    method, probs = fit_predict("erm", studio, components, channels_last=True)
    conv = next(m for m in method.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    contiguous = build_method("erm", components=components)
    contiguous.load_state_dict(method.state_dict(), device=CPU)  # default numerics: contiguous layout
    np.testing.assert_allclose(contiguous.predict(studio[1]), probs, atol=1e-4)


def test_compile_wraps_the_backbone_in_place(components):
    method = build_method("erm", components=components)
    method.build(CPU, SIZE, Numerics.resolve(CPU, compile=True))
    assert getattr(method.model["backbone"], "_compiled_call_impl", None) is not None
    plain = build_method("erm", components=components)
    plain.build(CPU, SIZE)
    assert list(method.model.state_dict()) == list(plain.model.state_dict())  # checkpoints stay portable


@pytest.mark.slow
def test_per_sample_reference_path_trains_reproducibly(studio, components):
    _, first = fit_predict("erm", studio, components, data_path="per_sample", loader_workers=1)
    _, second = fit_predict("erm", studio, components, data_path="per_sample", loader_workers=1)
    np.testing.assert_array_equal(first, second)
    _, cached = fit_predict("erm", studio, components)
    assert not np.array_equal(first, cached)  # another data path, other random draws


def test_per_sample_path_refuses_what_it_cannot_reproduce(studio, components):
    import dataclasses

    from benchmark.training.augment import AugmentSpec
    from benchmark.training.per_sample import check_per_sample

    with pytest.raises(BenchmarkError, match="one-of"):
        check_per_sample(studio[0], AugmentSpec(one_of_p=0.5), "scn")
    with pytest.raises(BenchmarkError, match="built without them"):
        check_per_sample(dataclasses.replace(studio[0], samples=None), AugmentSpec(), "erm")
    with pytest.raises(BenchmarkError, match="clip_features = 'cached'"):
        method = build_method("cafe", {"clip_features": "cached"}, components=components)
        method.fit(studio[0], recipe=Recipe(epochs=1, data_path="per_sample", progress=False), device=CPU,
                   log=MemoryLog())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_normalisation_constants_filled_on_the_device_equal_torchvisions(dtype):
    """The constants are filled from Python scalars (no host copy on CUDA); each value must be
    the one torchvision's Normalize builds from the same list, in every dtype."""
    from benchmark.training.augment import IMAGENET_MEAN, IMAGENET_STD, channel_constants, imagenet_normalize
    from torchvision.transforms.functional import normalize

    for values in (IMAGENET_MEAN, IMAGENET_STD):
        filled = channel_constants(values, torch.zeros(1, dtype=dtype))
        assert filled.dtype == dtype and filled.shape == (3, 1, 1)
        assert torch.equal(filled, torch.tensor(values, dtype=dtype).view(-1, 1, 1))
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert torch.equal(imagenet_normalize(x.clone()), normalize(x.clone(), IMAGENET_MEAN, IMAGENET_STD))
