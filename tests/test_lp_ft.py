"""LP-FT (methods/lp_ft.py): the probe's helpers against transcriptions of `log_reg_sk.py`
(scalar standardisation and its inversion, pad_head, the warm-started ascending C sweep), the
fine-tuning head starting as the probe, valmode keeping BatchNorm's statistics, and the cosine
per epoch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.models.specs import BackboneSpec
from benchmark.training.method import Components, MemoryLog
from benchmark.training.plugins import build_method
from benchmark.training.recipe import Recipe

from methods.lp_ft import inv_normalize_weights, normalize_features, pad_head, warm_started_probe

CPU = torch.device("cpu")


def blobs(n=60, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    return rng.normal(size=(n, d)) * 2 + 3 + y[:, None], y


def test_scalar_standardisation_and_its_inversion_give_the_same_logits():
    x, y = blobs()
    mean, std = normalize_features(x)
    assert mean == pytest.approx(x.mean()) and std == pytest.approx(x.std())  # one scalar each, not per column
    coef, intercept, classes, C, acc = warm_started_probe((x - mean) / std, y, (x - mean) / std, y, 5, 200, 0)
    raw_w, raw_b = inv_normalize_weights(coef, intercept, mean, std)
    assert np.allclose(x @ raw_w.T + raw_b, ((x - mean) / std) @ coef.T + intercept)


def test_pad_head_fills_absent_classes_and_splits_a_binary_row():
    w, b = pad_head(np.ones((2, 3)), np.array([1.0, 2.0]), np.array([0, 4]))
    assert w.shape == (7, 3) and np.all(w[[1, 2, 3, 5, 6]] == 0) and list(b[[0, 4]]) == [1.0, 2.0]
    w, b = pad_head(np.array([[2.0, 4.0]]), np.array([1.0]), np.array([0, 1]))
    assert np.allclose(w[:2], [[-1, -2], [1, 2]]) and np.allclose(b[:2], [-0.5, 0.5])


def test_the_c_sweep_is_ascending_warm_started_and_keeps_the_first_best():
    from sklearn.linear_model import LogisticRegression

    x, y = blobs()
    xv, yv = blobs(seed=1)
    # test_log_reg_warm_starting, transcribed
    clf = LogisticRegression(random_state=0, warm_start=True, max_iter=200)
    accs = []
    for C in np.logspace(-7, 2, 8):
        clf.C = C
        clf.fit(x, y)
        accs.append(float((clf.predict(xv) == yv).mean()))
    first_best = int(np.argmax(accs))
    coef, _, _, C, acc = warm_started_probe(x, y, xv, yv, 8, 200, 0)
    assert C == pytest.approx(np.logspace(-7, 2, 8)[first_best]) and acc == accs[first_best]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from benchmark.data import DATASETS, decode_split

    return decode_split(DATASETS.get("synth5/studio").load(None, "val", scale=0.1), 32,
                        cache_dir=tmp_path_factory.mktemp("decoded"))


def test_fine_tuning_starts_from_the_probe_keeps_bn_statistics_and_cosine_per_epoch(data, monkeypatch):
    from methods.lp_ft import LpFt

    method = build_method("lp_ft", {"num_reg_values": 4, "lr": 1e-2}, Components(BackboneSpec("mobilenet_v2", "none")))
    seen = {}
    original = LpFt.linear_probe

    def probe_then_record(self, *args):
        original(self, *args)
        seen["head"] = self.model["head"].weight.detach().clone()
        seen["bn"] = {k: v.clone() for k, v in self.model.state_dict().items() if "running_mean" in k}

    monkeypatch.setattr(LpFt, "linear_probe", probe_then_record)
    log, epochs = MemoryLog(), 3
    method.fit(data, recipe=Recipe(epochs=epochs, batch_size=16, input_size=32, seed=0, progress=False, prefetch=0),
               device=CPU, log=log, validation=data)
    assert "lp/C" in log.history[0][1] and log.history[0][0] == 0
    assert seen["head"].abs().sum() > 0 and not torch.equal(seen["head"], method.model["head"].weight)
    after = {k: v for k, v in method.model.state_dict().items() if "running_mean" in k}
    assert all(torch.equal(seen["bn"][k], after[k]) for k in after)  # valmode: statistics never updated
    lr0 = method.hparams.lr
    assert log.series("lr") == pytest.approx([lr0 * 0.5 * (1 + math.cos(math.pi * e / epochs)) for e in range(epochs)])
