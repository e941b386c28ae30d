"""Tip-Adapter and Tip-Adapter-F (methods/tip_adapter.py) on a tiny random open_clip model with a
text tower: the identities any faithful version passes (alpha = 0 is zero-shot), the cache built
as upstream's `build_cache_model` (average raw features, then normalise), the search grid and
its tie-breaking as `search_hp`, which tensor Tip-Adapter-F trains and its per-iteration cosine,
and applicability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from benchmark.core.errors import BenchmarkError
from benchmark.training.method import Components, MemoryLog
from benchmark.training.plugins import build_method
from benchmark.training.recipe import Recipe

from . import clip_tiny
from methods.tip_adapter import few_shot_rows, search_grid, tip_logits

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    from benchmark.data import DATASETS, decode_split

    load = DATASETS.get("synth5/studio").load
    cache = tmp_path_factory.mktemp("decoded")
    return (decode_split(load(None, "train", scale=0.03), 32, cache_dir=cache),
            decode_split(load(None, "val", scale=0.1), 32, cache_dir=cache))


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    from benchmark.training.features import FeatureCache

    return Components(encoder=clip_tiny.encoder(), features=FeatureCache(tmp_path_factory.mktemp("features")))


def fitted(name, components, splits, **hparams):
    train, val = splits
    method = build_method(name, {"shots": 2, "augment_epoch": 2, "train_epoch": 2, **hparams}, components)
    log = MemoryLog()
    method.fit(train, recipe=Recipe(seed=0, progress=False), device=CPU, log=log, validation=val)
    return method, log


def test_alpha_zero_is_clip_zero_shot_under_clips_input_policy(components, splits):
    from benchmark.models.clip_text import zero_shot_weights

    method, _ = fitted("tip_adapter", components, splits, init_alpha=0.0, search=False)
    _, val = splits
    f = F.normalize(components.features.get(components.encoder, val, CPU, policy="clip"), dim=-1)
    expected = torch.softmax(100 * f @ zero_shot_weights(components.encoder, method.hparams.templates, CPU).T, 1)
    assert np.allclose(method.predict(val), expected.numpy(), atol=1e-6)


def test_keys_average_raw_features_over_passes_then_normalise(components, splits, monkeypatch):
    from methods.tip_adapter import TipAdapter

    raw = [torch.tensor([[3.0, 1.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]])]
    passes = iter(raw)
    monkeypatch.setattr(TipAdapter, "_encode", lambda self, data, rows, normalise=True: next(passes))
    monkeypatch.setattr("methods.tip_adapter.few_shot_rows", lambda labels, shots, seed: np.array([0, 1]))
    method = build_method("tip_adapter", {"augment_epoch": 2, "search": False}, components)
    method.fit(splits[0], recipe=Recipe(seed=0, progress=False), device=CPU, log=MemoryLog())
    upstream = F.normalize(torch.stack(raw).mean(0), dim=-1)
    normalised_first = F.normalize(F.normalize(torch.stack(raw), dim=-1).mean(0), dim=-1)
    assert torch.equal(method.keys, upstream) and not torch.allclose(upstream, normalised_first)
    assert method.values.shape == (2, 7)


def test_search_grid_and_first_best_wins():
    grid = search_grid(7.0, 200)
    assert len(grid) == 200 and grid[0] == pytest.approx(0.1) and grid[-1] == pytest.approx(0.1 + 199 * 6.9 / 200)
    assert max(grid) < 7.0  # the upper end excluded


def test_logit_formula_is_upstreams():
    f = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    keys = F.normalize(torch.randn(5, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    w = F.normalize(torch.randn(7, 4, generator=torch.Generator().manual_seed(2)), dim=-1)
    values = F.one_hot(torch.tensor([0, 1, 2, 3, 4]), 7).float()
    alpha, beta = 1.17, 5.5
    affinity = f @ keys.T
    upstream = 100.0 * f @ w.T + alpha * ((-1) * (beta - beta * affinity)).exp() @ values
    assert torch.allclose(tip_logits(f, w, affinity, values, alpha, beta), upstream)


def test_few_shot_rows_are_per_class_and_seeded():
    labels = np.array([0] * 5 + [1] * 1 + [3] * 4)
    rows = few_shot_rows(labels, 2, seed=0)
    assert list(labels[rows]) == [0, 0, 1, 1, 3, 3] and list(rows[2:4]) == [5, 5]  # class 1 has one: drawn twice
    assert list(few_shot_rows(labels, 2, seed=0)) == list(rows) and len(few_shot_rows(labels, 0, 0)) == 10


def test_tip_adapter_f_trains_the_keys_only_with_a_per_iteration_cosine(components, splits):
    plain, _ = fitted("tip_adapter", components, splits, search=False)
    tuned, log = fitted("tip_adapter_f", components, splits, search=False, lr=1e-2)
    assert torch.equal(plain.values, tuned.values) and torch.equal(plain.zero_shot, tuned.zero_shot)
    assert not torch.allclose(plain.keys, tuned.keys)  # same cache (same seed), then trained
    lrs = log.series("lr")
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and len(lrs) == 2  # T_max = epochs x iterations
    assert tuned.predict(splits[1]).shape == (len(splits[1]), 7)


def test_alpha_and_beta_are_searched_on_the_validation_split(components, splits):
    method, log = fitted("tip_adapter", components, splits, search_steps_beta=5, search_steps_alpha=4)
    summary = next(v for _, v in log.history if "tip/alpha" in v)
    assert summary["tip/searched"] == 1.0 and summary["tip/alpha"] in search_grid(3.0, 4)
    assert summary["tip/beta"] in search_grid(7.0, 5) and 0 <= summary["tip/val_acc"] <= 1
    state = method.state_dict()
    again = build_method("tip_adapter", {}, components)
    again.load_state_dict(state)
    again.place(CPU)
    assert np.array_equal(again.predict(splits[1]), method.predict(splits[1]))


def test_not_applicable_without_a_text_tower_before_any_work():
    from benchmark.jobs.plan import not_applicable
    from benchmark.jobs.protocol import load_protocol

    protocol = load_protocol("synth5", {"seeds": "[0]"})
    why = not_applicable(protocol, ["tip_adapter", "tip_adapter_f", "erm"])
    assert set(why) == {"tip_adapter", "tip_adapter_f"}
    assert "torchvision:mobilenet_v2:imagenet" in why["tip_adapter"] and "openclip:" in why["tip_adapter"]
    with pytest.raises(BenchmarkError, match="shots = -1"):
        build_method("tip_adapter", {"shots": -1}, Components())
