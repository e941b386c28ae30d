"""Short real training runs on a synth5 domain, reproducibility, and the batched augmentations."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.training.augment import IMAGENET_MEAN, IMAGENET_STD, PAPER, AugmentSpec, augment
from benchmark.training.recipe import Recipe
from benchmark.training.trainer import epoch_sampler
from benchmark.training.method import MemoryLog
from benchmark.training.plugins import build_method

from .conftest import SIZE

RECIPE = Recipe(epochs=4, batch_size=32, input_size=SIZE, seed=7, progress=False)
# 60 steps instead of the paper's ~23,000: a larger learning rate, the same for every method.
SHORT_RUN = {"lr": 2e-3}


def train_and_predict(name, studio, components, recipe=RECIPE):
    train, test = studio
    method = build_method(name, SHORT_RUN, components=components)
    log = MemoryLog()
    method.fit(train, recipe=recipe, device=torch.device("cpu"), log=log)
    return method, log, method.predict(test)


@pytest.fixture(scope="module")
def trained(studio, components):
    """`trained(name)`: one short training run per method, shared by the tests that only read it
    (each further run a test needs, to compare with this one, it trains itself)."""
    runs = {}

    def get(name):
        if name not in runs:
            runs[name] = train_and_predict(name, studio, components)
        return runs[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", ["erm", "cafe", "clip_ft"])
def test_short_training_lowers_loss_and_beats_chance(name, studio, trained):
    train, test = studio
    method, log, probs = trained(name)
    losses = log.series("train/loss")
    assert len(losses) == RECIPE.epochs and losses[-1] < losses[0]
    assert log.series("lr") == pytest.approx([2e-3 * 0.9**k for k in range(RECIPE.epochs)])
    assert probs.shape == (len(test), 7) and np.allclose(probs.sum(1), 1, atol=1e-5)
    accuracy = float((probs.argmax(1) == test.labels).mean())
    majority = np.bincount(test.labels).max() / len(test)
    assert accuracy > majority + 0.1, f"{name}: accuracy {accuracy:.3f}, majority class {majority:.3f}"


@pytest.mark.slow
def test_same_seed_twice_gives_identical_predictions(studio, components, trained):
    _, _, first = trained("cafe")
    _, _, second = train_and_predict("cafe", studio, components)
    np.testing.assert_array_equal(first, second)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cafe", "scn"])
def test_evaluating_every_epoch_changes_no_trained_number(name, studio, components):
    from benchmark.training.evaluator import Evaluator

    train, test = studio
    recipe = dataclasses.replace(RECIPE, epochs=2)  # two runs of two epochs: evaluated and not
    _, _, plain = train_and_predict(name, studio, components, recipe)
    method = build_method(name, SHORT_RUN, components=components)
    log = MemoryLog()
    evaluator = Evaluator(method, {"studio": test}, log, val=test)
    method.fit(train, recipe=recipe, device=torch.device("cpu"), log=log, epoch_end=evaluator.epoch_end)
    np.testing.assert_array_equal(method.predict(test), plain)
    steps = [step for step, values in log.history if "test/studio/acc" in values]
    assert steps == list(range(1, recipe.epochs + 1)) and evaluator.epoch == recipe.epochs
    assert len(log.series("source_val/acc")) == recipe.epochs and len(log.series("time/eval_seconds")) == recipe.epochs
    np.testing.assert_array_equal(evaluator.probs["studio"], plain)  # the last evaluation is the final model


def test_eval_every_evaluates_those_epochs_and_the_last():
    from benchmark.training.trainer import evaluates_after

    assert [e for e in range(1, 8) if evaluates_after(e, Recipe(epochs=7, eval_every=3))] == [3, 6, 7]
    assert [e for e in range(1, 8) if evaluates_after(e, Recipe(epochs=7, eval_every=0))] == [7]


@pytest.mark.slow
def test_cafe_logs_its_mask_figure(studio, trained):
    method, _, _ = trained("cafe_mask")
    log = MemoryLog()
    method.report(studio[1], log)
    assert list(log.figures) == ["cafe_mask_masks.png"]
    masks = method.class_masks(studio[1])
    assert masks.shape == (7, 1280) and np.nanmin(masks) >= 0.5
    figure = log.figures["cafe_mask_masks.png"]
    heat, bar = figure.axes
    assert [t.get_text() for t in heat.get_xticklabels()] == [f"group {k}" for k in range(1, 8)]
    assert heat.images[0].get_array().shape == (7, 7 * 32)  # 1280 channels: 7 groups of 182, 32 bins each
    assert bar.get_ylabel() == "mean mask value"


@pytest.mark.slow
def test_state_dict_round_trip(studio, components, trained):
    method, _, probs = trained("erm")
    clone = build_method("erm", SHORT_RUN, components=components)
    clone.load_state_dict(method.state_dict(), device=torch.device("cpu"))
    np.testing.assert_allclose(clone.predict(studio[1]), probs, atol=1e-6)


def test_balanced_sampler_equalises_classes_with_fixed_epoch_size():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    recipe = Recipe(sampler="balanced", samples_per_epoch=3000, seed=1)
    order = np.fromiter(epoch_sampler(labels, recipe, torch.Generator().manual_seed(1)), dtype=np.int64)
    counts = np.bincount(labels[order], minlength=3)
    assert len(order) == 3000 and counts.min() > 850 and counts.max() < 1150


def half_grey(n: int, size: int) -> torch.Tensor:
    """n copies of a grey image whose left half is darker (a flip moves it), (n, size, size, 3) uint8."""
    grey = torch.full((n, size, size, 3), 128, dtype=torch.uint8)
    grey[:, :, : size // 2] = 100
    return grey


def augmentation_stats(x: torch.Tensor) -> dict[str, float]:
    """Erase rate and mean erased area, flip rate, noisy rate and noise std of augmented half_grey images."""
    n, size = x.shape[0], x.shape[-1]
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    pixels = (x * std + mean) * 255  # back to 0..255; erased pixels become the mean colour
    erased = (x == 0).all(dim=1)  # value 0 after normalisation on all three channels
    erased_frac = erased.float().mean(dim=(1, 2))
    has_erase = erased_frac > 0
    flipped = pixels[:, 0, size // 2, 0] > pixels[:, 0, size // 2, -1] + 10
    # Noise: residual std over a flat 4x4 patch untouched by erasing.
    right = pixels[:, :, :4, -4:].reshape(n, -1)
    stds = right[~erased[:, :4, -4:].reshape(n, -1).any(1)].std(dim=1)
    noisy = stds > 1
    return {"erase": has_erase.float().mean().item(), "area": erased_frac[has_erase].mean().item(),
            "flip": flipped.float().mean().item(), "noisy": noisy.float().mean().item(),
            "noise_std": stds[noisy].mean().item()}


def test_batched_augmentations_match_the_paper_distributions():
    stats = augmentation_stats(augment(half_grey(4000, 32), PAPER, torch.Generator().manual_seed(0)))
    assert abs(stats["erase"] - 0.5) < 0.03
    # torchvision: area ~ U(0.02, 0.25) -> mean 0.135 (boxes are rounded to whole pixels)
    assert abs(stats["area"] - 0.135) < 0.015
    assert abs(stats["flip"] - 0.5) < 0.03
    assert abs(stats["noisy"] - 0.5) < 0.04  # noise sigma^2 = 30 on half the images
    assert abs(stats["noise_std"] - math.sqrt(30)) < 0.6


def test_batched_augmentations_match_the_per_sample_reference_path():
    """The fast path's batched augmentations against the per-sample torchvision pipeline it replaces."""
    from benchmark.data.samples import Samples
    from benchmark.training.per_sample import PerSampleDataset

    n, size = 3000, 32
    images = half_grey(n, size)
    samples = Samples("t", "train", Path("."), [f"x#{i}" for i in range(n)], np.zeros(n), "", pixels=images.numpy())
    torch.manual_seed(0)
    dataset = PerSampleDataset(samples, np.arange(n), size)
    reference = augmentation_stats(torch.stack([dataset[i][0] for i in range(n)]))
    batched = augmentation_stats(augment(images, PAPER, torch.Generator().manual_seed(1)))
    for key, tolerance in {"erase": 0.04, "area": 0.015, "flip": 0.04, "noisy": 0.05, "noise_std": 0.6}.items():
        assert abs(batched[key] - reference[key]) < tolerance, (key, batched[key], reference[key])


def test_one_of_policy_never_flips_and_noises_together():
    gen = torch.Generator().manual_seed(0)
    img = torch.full((2000, 8, 8, 3), 128, dtype=torch.uint8)
    img[:, :, :4] = 60
    x = augment(img, AugmentSpec(one_of_p=0.5, erase_p=0.0), gen)
    flipped = x[:, 0, 0, 0] > x[:, 0, 0, -1]
    noisy = x[:, 0, :, 4:].reshape(2000, -1).std(dim=1) > 1e-3  # one channel: flat unless noised
    assert not (flipped & noisy).any()
    assert abs(flipped.float().mean().item() - 0.25) < 0.04 and abs(noisy.float().mean().item() - 0.25) < 0.04


@pytest.mark.parametrize("native", [48, 20])  # downsampled and upsampled to 32 px
def test_noise_is_drawn_at_the_native_size_like_the_per_sample_path(native):
    """The authors add noise before the resize: resized noise is weaker and smoother than fresh noise."""
    from benchmark.data.samples import Samples
    from benchmark.training.per_sample import PerSampleDataset

    n, size, spec = 1500, 32, AugmentSpec(erase_p=0.0, flip_p=0.0)
    flat = np.full((n, native, native, 3), 128, dtype=np.uint8)
    samples = Samples("t", "train", Path("."), [f"x#{i}" for i in range(n)], np.zeros(n), "", pixels=flat)
    torch.manual_seed(0)
    dataset = PerSampleDataset(samples, np.arange(n), size, spec)
    reference = torch.stack([dataset[i][0] for i in range(n)])
    cached = torch.full((n, size, size, 3), 128, dtype=torch.uint8)  # what the cache holds: resized, flat
    native_hw = torch.full((n, 2), native)
    batched = augment(cached, spec, torch.Generator().manual_seed(1), native_hw=native_hw)
    at_cache_size = augment(cached, spec, torch.Generator().manual_seed(1))

    def noise_std(x):  # mean per-image, per-channel std (0..255 units) of the noised images
        stds = (x * torch.tensor(IMAGENET_STD)[:, None, None] * 255).flatten(2).std(dim=2).mean(dim=1)
        return stds[stds > 0.5].mean().item()

    assert abs(noise_std(batched) - noise_std(reference)) < 0.1 * noise_std(reference)
    assert noise_std(reference) < 0.8 * math.sqrt(30) < noise_std(at_cache_size)  # the difference it fixes
