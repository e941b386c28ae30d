"""The training loop every trained method shares: the paper's recipe, seeding, batching, logging.

Recipe (spec §2.3): Adam with L2 weight decay, ExponentialLR stepped once per epoch, the paper's
augmentations (benchmark.augment), shuffled batches or a class-balanced sampler with a fixed
number of samples per epoch. All randomness (weights init, order, augmentation, CAFE's drop
masks) comes from the job's seed, so the same job on CPU gives identical numbers.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch.utils.data import RandomSampler, WeightedRandomSampler

from .augment import augment, normalize
from .data.cache import DecodedSplit
from .errors import BenchmarkError
from .execution import PRECISIONS, Execution, to_device_batch
from .per_sample import check_per_sample, per_sample_batches

if TYPE_CHECKING:
    from methods.base import RunLog, TrainedMethod


class TrainingDiverged(BenchmarkError):
    """The loss became NaN or infinite: the job stops instead of training on garbage."""


DATA_PATHS = ("cache", "per_sample")


@dataclass(frozen=True)
class Recipe:
    """How a job trains; defaults are the paper's (CAFE's train script)."""

    epochs: int = 60
    batch_size: int = 32
    input_size: int = 224
    sampler: str = "uniform"  # "uniform" (shuffle) or "balanced" (class-balanced, with replacement)
    samples_per_epoch: int = 0  # 0 = the split's size
    seed: int = 3407
    precision: str = "auto"  # "auto" | "fp32" | "bf16": see benchmark.execution
    channels_last: bool = True
    compile: bool = False  # torch.compile the trainable backbone
    # "cache": batches from the decoded-image cache, augmented batched on the device (the fast
    # path); "per_sample": decode and transform each image in DataLoader workers (the reference,
    # benchmark.per_sample), with `loader_workers` worker processes.
    data_path: str = "cache"
    loader_workers: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        if self.sampler not in ("uniform", "balanced"):
            raise BenchmarkError(f"recipe.sampler = {self.sampler!r}; expected 'uniform' or 'balanced'")
        if self.data_path not in DATA_PATHS:
            raise BenchmarkError(f"recipe.data_path = {self.data_path!r}; expected one of {', '.join(DATA_PATHS)}")
        if self.precision not in PRECISIONS:
            raise BenchmarkError(f"recipe.precision = {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        for key in ("epochs", "batch_size", "input_size"):
            if getattr(self, key) <= 0:
                raise BenchmarkError(f"recipe.{key} = {getattr(self, key)}; must be positive")
        if self.loader_workers < 0:
            raise BenchmarkError(f"recipe.loader_workers = {self.loader_workers}; must be 0 (load in the "
                                 "training process) or more")


def pick_device(name: str | None = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_sampler(labels: np.ndarray, recipe: Recipe, gen: torch.Generator):
    n = len(labels)
    size = recipe.samples_per_epoch or n
    if recipe.sampler == "balanced":
        counts = np.bincount(labels, minlength=int(labels.max()) + 1).astype(np.float64)
        weights = 1.0 / counts[labels]
        return WeightedRandomSampler(torch.from_numpy(weights), num_samples=size, replacement=True, generator=gen)
    # A fixed epoch size larger than the split repeats whole permutations.
    return RandomSampler(range(n), num_samples=size, generator=gen)


def epoch_batches(method: "TrainedMethod", data: DecodedSplit, order: np.ndarray, recipe: Recipe,
                  device: torch.device, gen: torch.Generator, aug_gen: torch.Generator):
    """(row indices, augmented batch, flip mask or None) of one epoch, by the recipe's data path."""
    if recipe.data_path == "per_sample":
        for index, x in per_sample_batches(data, order, recipe.batch_size, device, recipe.loader_workers, gen,
                                           method.augment_spec):
            yield index, x, None
        return
    for begin in range(0, len(order), recipe.batch_size):
        index = order[begin:begin + recipe.batch_size]
        native = None if data.native_hw is None else torch.from_numpy(data.native_hw[index])
        x, flips = augment(to_device_batch(data.read(index), device), method.augment_spec, aug_gen,
                           return_flips=True, native_hw=native)
        yield index, x, flips


def fit(method: "TrainedMethod", data: DecodedSplit, *, recipe: Recipe, device: torch.device, log: "RunLog",
        val_data: DecodedSplit | None = None) -> None:
    """Train `method` on `data` for `recipe.epochs` epochs."""
    seed_everything(recipe.seed)
    execution = Execution.from_recipe(device, recipe)
    method.build(device, recipe.input_size, execution)
    method.train_labels = np.array(data.labels)  # a private copy: methods may relabel, the cache never changes
    if recipe.data_path == "per_sample":
        check_per_sample(data, method.augment_spec, method.name)
    optimizer = torch.optim.Adam(method.param_groups(), lr=method.hparams.lr, weight_decay=method.hparams.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=method.hparams.lr_gamma)
    gen = torch.Generator(device="cpu").manual_seed(recipe.seed)
    aug_gen = torch.Generator(device=device).manual_seed(recipe.seed + 1)
    method.rng = random.Random(recipe.seed + 2)
    total_steps = math.ceil((recipe.samples_per_epoch or len(data)) / recipe.batch_size) * recipe.epochs
    bar = None
    if recipe.progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, desc=f"{method.name} on {data.dataset}", unit="step", leave=False)
    step = 0
    for epoch in range(1, recipe.epochs + 1):
        method.train_mode(True)
        sums: dict[str, float] = {}
        batches = 0
        start = time.perf_counter()
        order = np.fromiter(epoch_sampler(data.labels, recipe, gen), dtype=np.int64)
        for index, x, flips in epoch_batches(method, data, order, recipe, device, gen, aug_gen):
            labels = to_device_batch(method.train_labels[index], device)
            method.batch_index, method.batch_flips = index, flips  # for clip_features="cached"
            with execution.autocast():
                loss, parts = method.training_step(execution.layout(x), labels)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"{method.name}: loss is {loss.item()} at epoch {epoch}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            method.after_step(index, epoch)
            for key, value in {"loss": loss.detach(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            batches += 1
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{sums['loss'] / batches:.3f}")
        metrics = {f"train/{k}": v / max(1, batches) for k, v in sums.items()}
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        metrics["train/epoch_seconds"] = time.perf_counter() - start
        metrics.update(method.epoch_metrics())
        scheduler.step()
        if val_data is not None:
            metrics["source_val/acc"] = float((method.predict(val_data).argmax(1) == val_data.labels).mean())
        log.metrics(metrics, step=epoch)
    if bar is not None:
        bar.close()


@torch.no_grad()
def predict_batches(data: DecodedSplit, execution: Execution, batch_size: int,
                    logits_fn: Callable[[torch.Tensor, slice], torch.Tensor]) -> np.ndarray:
    """Softmax probabilities (N, C) over `data`, evaluated in order with the eval transform."""
    out = []
    for start in range(0, len(data), batch_size):
        rows = slice(start, min(len(data), start + batch_size))
        x = execution.layout(normalize(to_device_batch(data.read(rows), execution.device)))
        with execution.autocast():
            logits = logits_fn(x, rows)
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(out).numpy()
