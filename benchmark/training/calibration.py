"""Calibration of a model's probabilities: ECE, NLL and Brier score, and temperature scaling.

ECE is torchmetrics' multiclass calibration error: 15 equal-width bins of the max-softmax
confidence, the bins' |accuracy - confidence| weighted by their share of the samples (Guo et al.
2017, as gpleiss/temperature_scaling computes it; a confidence exactly on a bin edge falls in the
bin above, not below: a difference only on the 16 edges). NLL is scikit-learn's log loss
(probabilities clipped away from 0). The Brier score is the squared distance between the
probability vector and the one-hot label, summed over the classes and averaged over samples, in
[0, 2] (not divided by the class count).

Temperature scaling (Guo et al. 2017): one scalar T fitted by L-BFGS on a held-out split's
logits, logits / T afterwards; fitted on the source's validation split, never on a target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import log_loss
from torch.nn import functional as F

ECE_BINS = 15
PROB_FLOOR = 1e-12  # -log of a probability below this counts as -log(1e-12): a method that outputs 0 (LAME)


@dataclass(frozen=True)
class Calibration:
    ece: float
    nll: float
    brier: float

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}/ece": self.ece, f"{prefix}/nll": self.nll, f"{prefix}/brier": self.brier}


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs = torch.as_tensor(np.asarray(probs, dtype=np.float64))
    return float(multiclass_calibration_error(probs, torch.as_tensor(np.asarray(labels, dtype=np.int64)),
                                              num_classes=probs.shape[1], n_bins=bins, norm="l1"))


def reliability_bins(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """The reliability diagram's data: per equal-width confidence bin (lo, hi], its sample count,
    accuracy and mean confidence (NaN where empty)."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence, correct = probs.max(1), (probs.argmax(1) == np.asarray(labels)).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        n = int(inside.sum())
        out.append({"lo": float(lo), "hi": float(hi), "count": n,
                    "acc": float(correct[inside].mean()) if n else float("nan"),
                    "conf": float(confidence[inside].mean()) if n else float("nan")})
    return out


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(probs.shape[1])[np.asarray(labels)]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> Calibration:
    """ECE, NLL and Brier score of probabilities `probs` (N, C) against `labels` (N,)."""
    probs = np.asarray(probs, dtype=np.float64)
    clipped = np.clip(probs, PROB_FLOOR, 1.0)
    nll = log_loss(labels, clipped / clipped.sum(axis=1, keepdims=True), labels=list(range(probs.shape[1])))
    return Calibration(expected_calibration_error(labels, probs, bins), float(nll), brier_score(labels, probs))


# gpleiss/temperature_scaling: T starts at 1.5; one L-BFGS step(closure), lr 0.01, at most 200
# iterations (50 before its commit e888e9e, "for convergence"), no line search. Those small fixed
# steps can stop short of the optimum (from 1.5 towards a best T of 2.5 they end near 2.2) or
# overshoot past 0 (towards a best T of 0.5 they end at -10.9; refused below): measured in
# tests/test_calibration.py. "converged" adds a strong-Wolfe line search and reaches the optimum.
TEMPERATURE_START = 1.5
TEMPERATURE_FITS = {"upstream": dict(lr=0.01, max_iter=200),
                    "converged": dict(lr=1.0, max_iter=200, line_search_fn="strong_wolfe")}


def fit_temperature(logits: np.ndarray, labels: np.ndarray, fit: str = "upstream") -> float:
    """The temperature T > 0 that L-BFGS finds for the mean cross-entropy of logits / T on these
    labels, run as `fit` says (TEMPERATURE_FITS)."""
    if fit not in TEMPERATURE_FITS:
        raise ValueError(f"temperature fit {fit!r}; expected one of {', '.join(TEMPERATURE_FITS)}")
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    temperature = torch.nn.Parameter(torch.tensor(TEMPERATURE_START, dtype=torch.float64))
    optimizer = torch.optim.LBFGS([temperature], **TEMPERATURE_FITS[fit])

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(z / temperature, y)
        loss.backward()
        return loss

    optimizer.step(closure)
    value = float(temperature.detach())
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"temperature scaling ended at T = {value}: the validation logits do not fit one "
                         "positive temperature")
    return value


def scale_probabilities(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): temperature scaling of probabilities (for logits, softmax(z / T))."""
    if temperature == 1.0:
        return probs
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), PROB_FLOOR, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    out = np.exp(logp)
    return (out / out.sum(axis=1, keepdims=True)).astype(np.asarray(probs).dtype)
