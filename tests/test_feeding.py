"""How the trainer feeds and watches the device: read-ahead, a split held on the device, the
deferred non-finite check, and that none of these changes a number or a job's hash."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import torch

from benchmark.core.errors import BenchmarkError
from benchmark.training.prefetch import prefetched
from benchmark.training.recipe import Recipe
from benchmark.training.trainer import TrainingDiverged, resident_split
from benchmark.training.method import MemoryLog
from benchmark.training.plugins import build_method

from .conftest import SIZE

RECIPE = Recipe(epochs=2, batch_size=16, input_size=SIZE, seed=3, progress=False)


def trained_weights(name, data, components, **recipe):
    method = build_method(name, {"lr": 1e-3}, components=components)
    log = MemoryLog()
    method.fit(data, recipe=dataclasses.replace(RECIPE, **recipe), device=torch.device("cpu"), log=log)
    return [v.clone() for v in method.model.state_dict().values()], log


@pytest.mark.slow
def test_prefetch_and_a_resident_split_give_the_same_weights_as_reading_in_the_loop(studio, components):
    train = studio[0]
    short = {"samples_per_epoch": 96}  # six batches an epoch: twice the read-ahead depth, and fast
    reference, ref_log = trained_weights("cafe", train, components, prefetch=0, data_on_device="never", **short)
    for options in ({"prefetch": 3}, {"data_on_device": "always"}):
        weights, log = trained_weights("cafe", train, components, **options, **short)
        for a, b in zip(reference, weights):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert log.series("train/loss") == ref_log.series("train/loss")


def test_resident_split_is_the_decoded_images_and_auto_keeps_cpu_splits_on_disk(studio):
    train = studio[0]
    held = resident_split(train, dataclasses.replace(RECIPE, data_on_device="always"), torch.device("cpu"))
    np.testing.assert_array_equal(held.numpy(), train.read(slice(None)))
    assert resident_split(train, RECIPE, torch.device("cpu")) is None  # "auto" on CPU
    assert resident_split(train, dataclasses.replace(RECIPE, data_on_device="never"), torch.device("cpu")) is None


def test_prefetched_keeps_order_raises_where_the_read_failed_and_stops_its_thread():
    assert list(prefetched(range(20), lambda i: i * i, depth=3)) == [(i, i * i) for i in range(20)]
    assert list(prefetched(range(5), lambda i: -i, depth=0)) == [(i, -i) for i in range(5)]

    def read(i):
        if i == 4:
            raise OSError("row 4 unreadable")
        return i

    seen = []
    with pytest.raises(OSError, match="row 4"):
        for item, _ in prefetched(range(10), read, depth=2):
            seen.append(item)
    assert seen == [0, 1, 2, 3]

    before = threading.active_count()
    stream = prefetched(range(10_000), lambda i: i, depth=2)
    next(stream)
    stream.close()  # the consumer stops early: the reader thread must not be left blocked
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before


@pytest.mark.parametrize("sync_every", [1, 4, 1000])
def test_a_nan_loss_still_stops_the_job_within_its_epoch_naming_the_first_bad_step(studio, components,
                                                                                   monkeypatch, sync_every):
    import methods.erm as erm_module

    real_step = erm_module.Erm.training_step
    calls = {"n": 0}

    def step_going_nan_at_5(self, batch):
        loss, parts = real_step(self, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 5 else loss), parts

    monkeypatch.setattr(erm_module.Erm, "training_step", step_going_nan_at_5)
    method = build_method("erm", {"lr": 1e-3}, components=components)
    steps_per_epoch = 9  # the NaN comes inside the first epoch, which is kept short (a NaN epoch is slow)
    recipe = dataclasses.replace(RECIPE, sync_every=sync_every, samples_per_epoch=steps_per_epoch * RECIPE.batch_size)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 1, step 5$"):
        method.fit(studio[0], recipe=recipe, device=torch.device("cpu"), log=MemoryLog())
    # Checked every `sync_every` steps and at the epoch's end: never a step of the next epoch.
    assert calls["n"] <= min(steps_per_epoch, 5 + sync_every - (5 % sync_every))


def test_execution_only_recipe_fields_leave_the_job_hash_alone(tmp_path):
    from benchmark.jobs.plan import DataPlan, expand
    from benchmark.jobs.protocol import load_protocol

    def hashes(overrides):
        protocol = load_protocol("synth5", overrides=dict(kv.split("=") for kv in overrides))
        return [j.hash for j in expand(protocol, ["erm"], DataPlan(options=protocol.dataset_options))]

    base = hashes([])
    assert hashes(["recipe.prefetch=0", "recipe.data_on_device=never", "recipe.sync_every=7",
                   "recipe.eval_every=3"]) == base
    assert hashes(["recipe.batch_size=16"]) != base  # a field that changes the numbers does change it


@pytest.mark.parametrize("key, value, message", [
    ("prefetch", -1, "recipe.prefetch = -1"),
    ("data_on_device", "gpu", "recipe.data_on_device = 'gpu'"),
    ("sync_every", 0, "recipe.sync_every = 0"),
])
def test_bad_feeding_options_are_named(key, value, message):
    with pytest.raises(BenchmarkError, match=message):
        Recipe(**{key: value})
