"""The online test stream a TTA method adapts on, and one evaluation of a trained model on it.

A target's test split is put in a seeded order and cut into consecutive batches (the last one
kept, smaller); each batch is predicted once, by the method's `step`, which may adapt on it before
the next. Predictions of batch n depend only on batches up to n. Orders:

    iid        a seeded permutation
    dirichlet  TTAB's non-i.i.d. stream: C chunks, each class's samples spread over the chunks by
               Dirichlet(alpha) proportions (chunks already holding N/C samples get no more),
               redrawn until every chunk holds 5 or more; chunk after chunk, and inside a chunk
               its classes one after another in a random order (smaller alpha: longer runs of one
               class). Seeded here (TTAB draws from NumPy's global generator).

`reset`: `per_domain` (default) starts every target from the trained model; `never` carries the
adapted model and the method's memory from one target to the next (continual), in the order given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.errors import BenchmarkError
from ..data.cache import DecodedSplit
from .base import Adaptable, TTAMethod

ORDERS = ("iid", "dirichlet")
RESETS = ("per_domain", "never")
MIN_CHUNK = 5  # TTAB's: every chunk of a Dirichlet stream holds at least this many samples


@dataclass(frozen=True)
class StreamSettings:
    batch_size: int = 64  # the common default (TTAB, SAR, EATA, Alfarra et al.)
    order: str = "iid"
    dirichlet_alpha: float = 0.1  # TTAB's command-line default
    reset: str = "per_domain"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise BenchmarkError(f"tta batch_size = {self.batch_size}: at least 1")
        if self.order not in ORDERS:
            raise BenchmarkError(f"tta order = {self.order!r}; expected one of {', '.join(ORDERS)}")
        if self.reset not in RESETS:
            raise BenchmarkError(f"tta reset = {self.reset!r}; expected one of {', '.join(RESETS)}")
        if self.dirichlet_alpha <= 0:
            raise BenchmarkError(f"tta dirichlet_alpha = {self.dirichlet_alpha}: must be positive")


def stream_order(labels: np.ndarray, settings: StreamSettings, seed: int) -> np.ndarray:
    """The order in which the samples of a split arrive: a permutation of range(len(labels))."""
    rng = np.random.default_rng(seed)
    if settings.order == "iid":
        return rng.permutation(len(labels))
    return dirichlet_order(np.asarray(labels), settings.dirichlet_alpha, rng)


def dirichlet_order(labels: np.ndarray, alpha: float, rng: np.random.Generator, max_tries: int = 1000) -> np.ndarray:
    classes = np.unique(labels)
    chunks_n = len(classes)
    n = len(labels)
    for _ in range(max_tries):
        chunks: list[list[int]] = [[] for _ in range(chunks_n)]
        per_class: list[list[list[int]]] = [[] for _ in range(chunks_n)]
        for c in classes:
            members = np.flatnonzero(labels == c)
            rng.shuffle(members)
            q = rng.dirichlet(np.full(chunks_n, alpha))
            q = np.array([p * (len(chunk) < n / chunks_n) for p, chunk in zip(q, chunks)])
            q = q / q.sum() if q.sum() > 0 else np.full(chunks_n, 1 / chunks_n)
            cuts = (np.cumsum(q) * len(members)).astype(int)[:-1]
            for k, part in enumerate(np.split(members, cuts)):
                chunks[k].extend(part.tolist())
                if len(part):
                    per_class[k].append(part.tolist())
        if min(len(chunk) for chunk in chunks) >= min(MIN_CHUNK, n // chunks_n):
            break
    order = []
    for groups in per_class:  # inside a chunk: its classes one after another, in a random order
        for k in rng.permutation(len(groups)):
            order.extend(groups[k])
    return np.asarray(order, dtype=np.int64)


@dataclass
class StreamResult:
    probs: np.ndarray  # (N, C) in the split's own order
    seconds: float  # wall time of the stream (adaptation and prediction)
    batches: int
    counters: dict[str, float] = field(default_factory=dict)


def run_stream(tta: TTAMethod, model: Adaptable, data: DecodedSplit, order: np.ndarray, batch_size: int) -> StreamResult:
    """Every batch of `data` in `order` predicted once by `tta.step`; the probabilities put back
    in the split's order."""
    probs = np.zeros((len(data), model.num_classes), dtype=np.float32)
    before = dict(tta.counters)
    synchronize = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    batches = 0
    for first in range(0, len(order), batch_size):
        rows = torch.as_tensor(order[first:first + batch_size])
        out = tta.step(model.inputs(data, rows), rows, data)
        probs[rows.numpy()] = out.detach().float().cpu().numpy()
        batches += 1
    synchronize()
    seconds = time.perf_counter() - start
    counters = {k: v - before.get(k, 0.0) for k, v in tta.counters.items()}
    if "supports" in tta.counters:  # a level, not a sum
        counters["supports"] = tta.counters["supports"]
    return StreamResult(probs, seconds, batches, counters)
