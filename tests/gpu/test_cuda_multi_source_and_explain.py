"""The paths added for multi-source (leave-one-domain-out) jobs and `benchmark explain`, on the
device: a union of two domains trained with the domain-balanced sampler, its domains reaching
the method, without a host sync; GradCAM maps of trained methods computed where they were trained."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from benchmark.training.method import MemoryLog
from benchmark.training.plugins import build_method
from benchmark.training.recipe import Recipe

from .conftest import DEVICE


@pytest.fixture(scope="module")
def union(setting, tmp_path_factory):
    """synth5/studio + synth5/film train splits as one decoded split."""
    from benchmark.data import DATASETS, decode_split
    from benchmark.data.union import union_split

    cache = tmp_path_factory.mktemp("union-cache")
    parts = [decode_split(DATASETS.get(name).load(None, "train", scale=0.03), setting["size"], cache_dir=cache)
             for name in ("synth5/studio", "synth5/film")]
    return union_split(parts, cache_dir=cache)


def recipe(setting, **changes) -> Recipe:
    base = Recipe(epochs=1, batch_size=16, input_size=setting["size"], seed=3, progress=False,
                  sampler="domain_balanced")
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("data_on_device", ["never", "always"])
@pytest.mark.parametrize("name", ["cafe", "erm"])
def test_a_union_trains_domain_balanced_with_its_domains_on_the_device(name, data_on_device, setting, components,
                                                                       union, monkeypatch, no_host_sync, report):
    """Every batch carries its rows' domains, on the device, equal to the split's; on CUDA the
    epoch runs under torch's sync debug mode "error" (no_host_sync)."""
    seen = []
    method = build_method(name, components=components)
    real_step = method.training_step

    def watched_step(batch):
        assert batch.domains is not None and batch.domains.device.type == DEVICE.type
        seen.append((np.asarray(batch.index), batch.domains))
        return real_step(batch)

    monkeypatch.setattr(method, "training_step", watched_step)
    method.fit(union, recipe=recipe(setting, data_on_device=data_on_device, sync_every=10**6), device=DEVICE,
               log=MemoryLog())
    assert seen
    rows = np.concatenate([index for index, _ in seen])
    domains = torch.cat([d for _, d in seen]).cpu().numpy()
    np.testing.assert_array_equal(domains, union.domains[rows])
    share_film = float((domains == 1).mean())
    report(f"union_domain_balanced[{name}-{data_on_device}]", batches=len(seen), share_second_domain=share_film)
    assert 0.25 < share_film < 0.75  # two domains with all seven classes: about half each


@pytest.mark.parametrize("name", ["eac", "cafe"])
def test_gradcam_maps_of_a_method_trained_on_the_device(name, setting, components, splits, report):
    from benchmark.report.explain import gradcam_maps, pick_images

    train, test = splits
    method = build_method(name, components=components)
    method.fit(train, recipe=recipe(setting, sampler="uniform"), device=DEVICE, log=MemoryLog())
    rows = pick_images(len(test), 4, seed=0)
    maps, predicted = gradcam_maps(method, test, rows, "label")
    assert maps.shape == (4, setting["size"], setting["size"]) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    # Below 64 px the last block is one position (stride 32): the map is flat, zero after scaling.
    assert maps.max() > 0 or setting["size"] < 64
    np.testing.assert_array_equal(predicted, method.predict(test)[rows].argmax(1))
    again, _ = gradcam_maps(method, test, rows, "label")
    report(f"gradcam[{name}]", max_abs_diff_repeat=float(np.abs(again - maps).max()),
           encoder_dtype=str(method.components.encoder.dtype))
    np.testing.assert_allclose(again, maps, atol=1e-4)
