"""The training loop every trained method shares: the paper's recipe, seeding, batching, logging.

Recipe (spec §2.3): Adam with L2 weight decay, ExponentialLR stepped once per epoch, the paper's
augmentations (benchmark.augment), shuffled batches or a class-balanced sampler with a fixed
number of samples per epoch. All randomness (weights init, order, augmentation, CAFE's drop
masks) comes from the job's seed, so the same job on CPU gives identical numbers.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar

import numpy as np
import torch
from torch.utils.data import RandomSampler, WeightedRandomSampler

from .augment import augment, normalize
from .data.cache import DecodedSplit
from .errors import BenchmarkError
from .execution import PRECISIONS, Execution, host_batch, to_device_batch
from .per_sample import check_per_sample, per_sample_batches
from .prefetch import prefetched

if TYPE_CHECKING:
    from methods.base import RunLog, TrainedMethod


class TrainingDiverged(BenchmarkError):
    """The loss became NaN or infinite: the job stops instead of training on garbage."""


DATA_PATHS = ("cache", "per_sample")
DATA_ON_DEVICE = ("auto", "always", "never")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
ADAM_IMPLS = ("auto", "fused", "foreach")
# recipe.data_on_device = "auto" holds the decoded split on the GPU when it takes at most this
# share of the GPU's free memory (the rest is left to the models and to jobs packed beside it).
RESIDENT_SHARE = 0.25


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
    compile_mode: str = "default"  # torch.compile's mode: "default", "reduce-overhead" (CUDA graphs), ...
    # Adam's kernels: "auto" (one fused kernel on CUDA, torch's default elsewhere), "fused", "foreach".
    adam_impl: str = "auto"
    cudnn_benchmark: bool = False  # let cuDNN time its algorithms per shape (faster; last bits may vary run to run)
    # "cache": batches from the decoded-image cache, augmented batched on the device (the fast
    # path); "per_sample": decode and transform each image in DataLoader workers (the reference,
    # benchmark.per_sample), with `loader_workers` worker processes.
    data_path: str = "cache"
    loader_workers: int = 2
    progress: bool = True
    # How the cache path feeds the device; none of these changes a number (not in the job hash):
    prefetch: int = 2  # batches read ahead in a background thread (0: read in the loop)
    data_on_device: str = "auto"  # hold the decoded split on the GPU: "auto" (when it fits), "always", "never"
    sync_every: int = 50  # steps between the host's looks at the loss (non-finite check, progress bar)

    # Fields that change how fast a job runs, never what it computes (left out of the job hash).
    EXECUTION_ONLY: ClassVar[tuple[str, ...]] = ("progress", "prefetch", "data_on_device", "sync_every")
    # Fields added after jobs were first hashed: they enter a job's identity only when set away
    # from their default, so the jobs hashed before them keep their hash.
    HASHED_WHEN_CHANGED: ClassVar[tuple[str, ...]] = ("compile_mode", "adam_impl", "cudnn_benchmark")

    def identity(self) -> dict:
        """The recipe's part of a job's identity (benchmark.jobs)."""
        defaults = Recipe()
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in self.EXECUTION_ONLY
                and not (k in self.HASHED_WHEN_CHANGED and v == getattr(defaults, k))}

    def __post_init__(self) -> None:
        if self.sampler not in ("uniform", "balanced"):
            raise BenchmarkError(f"recipe.sampler = {self.sampler!r}; expected 'uniform' or 'balanced'")
        if self.data_path not in DATA_PATHS:
            raise BenchmarkError(f"recipe.data_path = {self.data_path!r}; expected one of {', '.join(DATA_PATHS)}")
        if self.precision not in PRECISIONS:
            raise BenchmarkError(f"recipe.precision = {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        if self.compile_mode not in COMPILE_MODES:
            raise BenchmarkError(f"recipe.compile_mode = {self.compile_mode!r}; expected one of {', '.join(COMPILE_MODES)}")
        if self.adam_impl not in ADAM_IMPLS:
            raise BenchmarkError(f"recipe.adam_impl = {self.adam_impl!r}; expected one of {', '.join(ADAM_IMPLS)}")
        if self.data_on_device not in DATA_ON_DEVICE:
            raise BenchmarkError(f"recipe.data_on_device = {self.data_on_device!r}; expected one of "
                                 f"{', '.join(DATA_ON_DEVICE)}")
        for key in ("epochs", "batch_size", "input_size", "sync_every"):
            if getattr(self, key) <= 0:
                raise BenchmarkError(f"recipe.{key} = {getattr(self, key)}; must be positive")
        if self.prefetch < 0:
            raise BenchmarkError(f"recipe.prefetch = {self.prefetch}; must be 0 (no read-ahead) or more")
        if self.loader_workers < 0:
            raise BenchmarkError(f"recipe.loader_workers = {self.loader_workers}; must be 0 (load in the "
                                 "training process) or more")


def pick_device(name: str | None = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def adam_kernels(impl: str, device: torch.device) -> dict:
    """torch.optim.Adam's keyword for `recipe.adam_impl`: "auto" fuses the update into one kernel
    on CUDA (one launch instead of several per parameter group) and leaves torch's default elsewhere."""
    if impl == "fused" or (impl == "auto" and device.type == "cuda"):
        return {"fused": True}
    if impl == "foreach":
        return {"foreach": True}
    return {}


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


def resident_split(data: DecodedSplit, recipe: Recipe, device: torch.device) -> torch.Tensor | None:
    """The whole decoded split as one uint8 tensor on `device`, when `recipe.data_on_device` asks
    for it ("auto": on CUDA, when it fits in RESIDENT_SHARE of the free memory); else None."""
    if recipe.data_path != "cache" or recipe.data_on_device == "never" or not len(data):
        return None
    if recipe.data_on_device == "auto":
        if device.type != "cuda":
            return None  # on CPU the page cache already holds it; a copy would only add memory
        free, _ = torch.cuda.mem_get_info(device)
        if data.images.nbytes > RESIDENT_SHARE * free:
            return None
    images = torch.empty(data.images.shape, dtype=torch.uint8, device=device)
    chunk = 1024
    for begin in range(0, len(data), chunk):
        rows = slice(begin, min(len(data), begin + chunk))
        images[rows] = to_device_batch(data.read(rows), device)
    return images


def epoch_batches(method: "TrainedMethod", data: DecodedSplit, order: np.ndarray, recipe: Recipe,
                  device: torch.device, gen: torch.Generator, aug_gen: torch.Generator,
                  resident: torch.Tensor | None = None):
    """(row indices, augmented batch, flip mask or None) of one epoch, by the recipe's data path.

    `resident`: the split already on the device (resident_split); batches are gathered there.
    Otherwise the rows are read `recipe.prefetch` batches ahead (into pinned memory on CUDA) and
    copied without blocking, so neither the read nor the copy waits for the GPU.
    """
    if recipe.data_path == "per_sample":
        for index, x in per_sample_batches(data, order, recipe.batch_size, device, recipe.loader_workers, gen,
                                           method.augment_spec):
            yield index, x, None
        return
    indices = (order[begin:begin + recipe.batch_size] for begin in range(0, len(order), recipe.batch_size))
    if resident is not None:
        batches = ((index, resident[to_device_batch(index, device)]) for index in indices)
    else:
        batches = ((index, host.to(device, non_blocking=True))
                   for index, host in prefetched(indices, lambda index: host_batch(data.read(index), device),
                                                 recipe.prefetch))
    for index, images in batches:
        native = None if data.native_hw is None else torch.from_numpy(data.native_hw[index])
        x, flips = augment(images, method.augment_spec, aug_gen, return_flips=True, native_hw=native)
        yield index, x, flips


class StepMonitor:
    """The per-epoch loss sums and the non-finite check, kept on the device.

    Reading a loss on the host (`float(loss)`, `if not isfinite(loss)`) makes the CPU wait for the
    GPU every step, so the next batch cannot be queued behind the current one. Here the sums and
    the first non-finite step stay device tensors; the host looks every `sync_every` steps and at
    the end of the epoch, so a diverged job still stops within the epoch, naming the step where
    the loss first became non-finite.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.batches = 0
        self._first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self._bad_loss = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, step: int, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        loss = loss.detach()
        first = (self._first_bad < 0) & ~torch.isfinite(loss)
        self._first_bad = torch.where(first, step, self._first_bad)
        self._bad_loss = torch.where(first, loss.double(), self._bad_loss)
        for key, value in {"loss": loss, **parts}.items():
            value = torch.as_tensor(value, device=self.device).detach().double()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.batches += 1

    def check(self, name: str, epoch: int) -> None:
        """Raise TrainingDiverged if any loss so far was NaN or infinite (one host sync)."""
        first = int(self._first_bad)
        if first >= 0:
            raise TrainingDiverged(f"{name}: loss is {float(self._bad_loss)} at epoch {epoch}, step {first}")

    def mean_loss(self) -> float:
        return float(self.sums["loss"]) / max(1, self.batches)

    def epoch_means(self) -> dict[str, float]:
        """The epoch's mean of each loss part (one host sync), and a fresh start for the next."""
        means = {f"train/{k}": float(v) / max(1, self.batches) for k, v in self.sums.items()}
        self.sums, self.batches = {}, 0
        return means


def fit(method: "TrainedMethod", data: DecodedSplit, *, recipe: Recipe, device: torch.device, log: "RunLog",
        val_data: DecodedSplit | None = None) -> None:
    """Train `method` on `data` for `recipe.epochs` epochs."""
    seed_everything(recipe.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = recipe.cudnn_benchmark  # process-wide: jobs in a process run one by one
    execution = Execution.from_recipe(device, recipe)
    method.build(device, recipe.input_size, execution)
    method.train_labels = np.array(data.labels)  # a private copy: methods may relabel, the cache never changes
    if recipe.data_path == "per_sample":
        check_per_sample(data, method.augment_spec, method.name)
    optimizer = torch.optim.Adam(method.param_groups(), lr=method.hparams.lr, weight_decay=method.hparams.weight_decay,
                                 **adam_kernels(recipe.adam_impl, device))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=method.hparams.lr_gamma)
    gen = torch.Generator(device="cpu").manual_seed(recipe.seed)
    aug_gen = torch.Generator(device=device).manual_seed(recipe.seed + 1)
    method.rng = random.Random(recipe.seed + 2)
    resident = resident_split(data, recipe, device)
    total_steps = math.ceil((recipe.samples_per_epoch or len(data)) / recipe.batch_size) * recipe.epochs
    bar = None
    if recipe.progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, desc=f"{method.name} on {data.dataset}", unit="step", leave=False)
    monitor = StepMonitor(device)
    step = 0
    for epoch in range(1, recipe.epochs + 1):
        method.train_mode(True)
        start = time.perf_counter()
        order = np.fromiter(epoch_sampler(data.labels, recipe, gen), dtype=np.int64)
        for index, x, flips in epoch_batches(method, data, order, recipe, device, gen, aug_gen, resident):
            labels = to_device_batch(method.train_labels[index], device)
            method.batch_index, method.batch_flips = index, flips  # for clip_features="cached"
            with execution.autocast():
                loss, parts = method.training_step(execution.layout(x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            method.after_step(index, epoch)
            monitor.add(step, loss, parts)
            step += 1
            if step % recipe.sync_every == 0:
                monitor.check(method.name, epoch)
                if bar is not None:
                    bar.set_postfix(epoch=epoch, loss=f"{monitor.mean_loss():.3f}")
            if bar is not None:
                bar.update(1)
        monitor.check(method.name, epoch)
        metrics = monitor.epoch_means()
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
