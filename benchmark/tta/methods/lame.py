"""lame: Laplacian-adjusted maximum-likelihood estimation (Boudiaf et al., CVPR 2022;
fiveai/LAME src/adaptation/lame.py). The network is untouched (eval mode); each batch's class
assignment Y is re-solved so that neighbours in feature space agree:

    Y = softmax(log p + lambda * A Y), iterated from Y = p up to 100 times, until the energy
    sum(-log p * Y - lambda * (A Y) * Y + Y * log Y) changes by at most 1e-8 of itself,

with p the model's probabilities, A an affinity of the L2-normalised features (the input of the
final linear layer): `knn` (1 for each of the k nearest others, row-wise; what the follow-ups
run, the default), `rbf` (exp(-d^2 / 2 sigma^2), sigma the mean distance to the k-th nearest,
LAME's own benchmark config) or `linear` (cosine similarities). Its output is Y, probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..base import Adaptable, TTAMethod, register_tta

AFFINITIES = ("knn", "rbf", "linear")


@dataclass(frozen=True)
class LAMEOptions:
    affinity: str = "knn"
    knn: int = 5
    force_symmetry: bool = False
    max_iter: int = 100


def affinity(features: torch.Tensor, kind: str, k: int) -> torch.Tensor:
    n = len(features)
    if kind == "linear":
        return features @ features.T
    distances = torch.cdist(features, features, compute_mode="donot_use_mm_for_euclid_dist")  # exact, as norm(x_i - x_j)
    if kind == "knn":
        neighbours = distances.topk(min(k + 1, n), dim=1, largest=False).indices[:, 1:]  # the first is itself
        out = torch.zeros(n, n, dtype=features.dtype, device=features.device)
        return out.scatter_(1, neighbours, 1.0)
    kth = distances.topk(min(k, n), dim=1, largest=False).values[:, -1]  # counting itself, as upstream
    sigma = kth.mean()
    return torch.exp(-distances ** 2 / (2 * sigma ** 2))


def laplacian_optimization(unary: torch.Tensor, kernel: torch.Tensor, max_iter: int = 100,
                           bound_lambda: float = 1.0) -> torch.Tensor:
    """LAME's fixed point: Y from the unaries -log p and the affinity."""
    energies = []
    y = (-unary).softmax(-1)
    for i in range(max_iter):
        pairwise = bound_lambda * kernel.matmul(y)
        y = (-unary + pairwise).softmax(-1)
        energy = (unary * y - bound_lambda * pairwise * y + y * torch.log(y.clip(1e-20))).sum()
        energies.append(float(energy))
        if i > 1 and abs(energies[-1] - energies[-2]) <= 1e-8 * abs(energies[-2]):
            break
    return y


@register_tta("lame")
class LAME(TTAMethod):
    description = "each batch's predictions smoothed over its feature-space neighbours (no weight changes)"
    Options = LAMEOptions

    @classmethod
    def check(cls, options) -> str | None:
        if options.affinity not in AFFINITIES:
            return f"affinity = {options.affinity!r}: expected one of {', '.join(AFFINITIES)}"
        return None if options.knn >= 1 else f"knn = {options.knn}: at least 1"

    @classmethod
    def refuse(cls, options, model: Adaptable, source_val) -> str | None:
        if model.head is None:
            return "its logits are not the output of one linear layer (no features to compare)"
        return None

    @torch.no_grad()
    def step(self, x, rows, data) -> torch.Tensor:
        logits, features = self.model.logits_and_features(x, rows, data)
        probs = logits.softmax(1)
        kernel = affinity(F.normalize(features, dim=1), self.options.affinity, self.options.knn)
        if self.options.force_symmetry:
            kernel = (kernel + kernel.T) / 2
        self.count(forwards=1)
        return laplacian_optimization(-torch.log(probs + 1e-10), kernel, self.options.max_iter)
