"""The training loop every trained method shares: one loop for one job or a fused group of jobs.

The loop body is the steps of training and nothing else: draw each job's epoch order, feed its
batches, take the loss, step the optimiser, log each epoch's means, evaluate, and call every
training extension's hooks in between (benchmark.training.extensions: SAM, SWAD, MixStyle, the
fine-tuning options, the step monitor, the progress bar and resume points each live in one file
and own their options, checks and saved state). It never names an extension, a method or a
backbone.

What trains is a `Learner`: `SingleModel` (one job: its method's own `training_step`) or
`benchmark.training.fused.FusedModels` (K jobs of one method stacked and vmapped). Each job of
the loop keeps its own seed, split, sampler, augmentation stream and training labels (`LoopJob`),
so a fused job computes what it would alone, up to the last bits of batched kernels.

The paper's recipe (benchmark.training.recipe): Adam with L2 weight decay, ExponentialLR stepped
once per epoch, the paper's augmentations (benchmark.training.augment), shuffled batches or a
class-balanced sampler with a fixed number of samples per epoch. All randomness (weights init,
order, augmentation, CAFE's drop masks) comes from the job's seed, so the same job on CPU gives
identical numbers.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import RandomSampler, WeightedRandomSampler

from .augment import AugmentSpec, augment, normalize
from ..data.cache import DecodedSplit
from ..core import interrupt
from ..core.errors import BenchmarkError
from .numerics import Numerics, host_batch, to_device_batch
from .extensions.step_monitor import TrainingDiverged
from .method import Batch, EpochEnd, OptimizerSettings, Relabel, RunLog
from .optimization import clip_gradients, optimizer_for, steps_per_step
from .per_sample import check_per_sample, per_sample_batches
from .prefetch import prefetched
from .recipe import Recipe
from .resume import ResumePoint, random_state, set_random_state

__all__ = ["Loop", "LoopJob", "SingleModel", "Trainable", "TrainingDiverged", "epoch_batches", "epoch_sampler",
           "evaluates_after", "fit", "pick_device", "predict_batches", "resident_split", "run_loop", "seed_everything"]


class Trainable(Protocol):
    """What the loop needs of a method (benchmark.training.trained_method.TrainedMethod provides it)."""

    name: str
    augment_spec: AugmentSpec

    def build(self, device: torch.device, input_size: int, numerics: Numerics, seed: int) -> None: ...

    def param_groups(self) -> list[dict[str, Any]]: ...

    def optimizer_settings(self) -> OptimizerSettings: ...

    def train_mode(self, training: bool) -> None: ...

    def with_extras(self, batch: Batch) -> Batch: ...

    def training_step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def after_step(self, batch: Batch, epoch: int) -> Relabel | None: ...

    def epoch_metrics(self) -> dict[str, float]: ...

    def training_state(self) -> dict[str, Any]: ...

    def load_training_state(self, state: dict[str, Any]) -> None: ...

    def predict(self, data: DecodedSplit) -> np.ndarray: ...


# recipe.data_on_device = "auto" holds the decoded split on the GPU when it takes at most this
# share of the GPU's free memory (the rest is left to the models and to jobs packed beside it).
RESIDENT_SHARE = 0.25


def pick_device(name: str | None = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")



def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)



def epoch_sampler(labels: np.ndarray, recipe: Recipe, gen: torch.Generator, domains: np.ndarray | None = None):
    """The epoch's row order. "balanced": every class equally likely; "domain_balanced": every
    (domain, class) cell of a multi-source split equally likely (domains holding all seven
    classes get equal shares, balanced within); both draw with replacement."""
    n = len(labels)
    size = recipe.samples_per_epoch or n
    if recipe.sampler in ("balanced", "domain_balanced"):
        cells = labels if recipe.sampler == "balanced" or domains is None else domains * (int(labels.max()) + 1) + labels
        counts = np.bincount(cells).astype(np.float64)
        weights = 1.0 / counts[cells]
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



def epoch_batches(method: Trainable, data: DecodedSplit, order: np.ndarray, recipe: Recipe,
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





@dataclass
class LoopJob:
    """One job in the loop: its method, data and recipe, where its numbers go, and its own stream
    (training labels, order and augmentation generators, device-resident split)."""

    method: Trainable
    data: DecodedSplit
    recipe: Recipe
    log: RunLog
    epoch_end: EpochEnd | None = None
    labels: np.ndarray = field(default=None)  # a private copy: methods may relabel, the cache never changes
    gen: torch.Generator | None = None
    aug_gen: torch.Generator | None = None
    resident: torch.Tensor | None = None
    error: BaseException | None = None


class SingleModel:
    """One job's method as the loop's learner: its own parameter groups and `training_step`, with
    every extension's loss term added."""

    def __init__(self, loop: "Loop"):
        self.loop = loop

    def param_groups(self) -> list[dict[str, Any]]:
        return self.loop.method.param_groups()

    def step(self, batches: Sequence[Batch]) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(1,) losses, {part: value} and the objective to differentiate."""
        loss, parts = self.loop.step_loss_parts(batches[0])
        return loss.detach().reshape(1), parts, loss

    def write_back(self) -> None:
        """Nothing to do: the method's model is what trains."""


@dataclass
class Loop:
    """The training state every hook sees: the jobs, the device, the optimiser, where training stands."""

    jobs: list[LoopJob]
    recipe: Recipe
    device: torch.device
    numerics: Numerics
    total_steps: int
    resume: ResumePoint | None = None
    validation: DecodedSplit | None = None
    extensions: list[Any] = field(default_factory=list)
    settings: OptimizerSettings | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    learner: Any = None
    step: int = 0  # optimiser steps taken
    epoch: int = 0
    batches_done: int = 0  # in the current epoch
    batches_in_epoch: int = 0
    epoch_started: float = 0.0
    orders: list[np.ndarray] = field(default_factory=list)
    stop: bool = False  # set by an extension: training ends after this step (SWAD's dead valley)
    last_epoch: bool = False

    # -- what extensions read ----------------------------------------------------------------------
    @property
    def method(self) -> Trainable:
        return self.jobs[0].method

    @property
    def model(self) -> torch.nn.Module | None:
        return getattr(self.method, "model", None)

    @property
    def log(self) -> RunLog:
        return self.jobs[0].log

    def alive(self) -> list[bool]:
        return [job.error is None for job in self.jobs]

    def all_alive(self) -> bool:
        return all(self.alive())

    def fail(self, k: int, error: BaseException) -> None:
        """Job k stops here with `error`; the others of its group go on."""
        if self.jobs[k].error is None:
            self.jobs[k].error = error

    def epoch_order(self) -> torch.Tensor:
        return torch.from_numpy(np.stack(self.orders))

    def step_loss_parts(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One job's loss on `batch` (the method's, with every extension's term) and its parts."""
        with self.numerics.autocast():
            loss, parts = self.method.training_step(batch)
            for ext in self.extensions:
                loss = ext.loss(self, batch, loss, parts)
        return loss, parts

    def step_loss(self, batch: Batch) -> torch.Tensor:
        return self.step_loss_parts(batch)[0]

    def batch(self, job: LoopJob, index: np.ndarray, x: torch.Tensor, flips: torch.Tensor | None,
              labels: np.ndarray | None = None) -> Batch:
        domains = None if job.data.domains is None else to_device_batch(job.data.domains[index], self.device)
        labels = job.labels if labels is None else labels
        return job.method.with_extras(Batch(self.numerics.layout(x), to_device_batch(labels[index], self.device),
                                            index, flips, domains))

    def fresh_batches(self, count: int):
        """`count` more training batches of the first job (new epochs drawn as needed, the split's
        own labels), with the step's extras: for statistics re-estimated after training."""
        job, drawn = self.jobs[0], 0
        while True:
            order = np.fromiter(epoch_sampler(job.data.labels, job.recipe, job.gen, job.data.domains), dtype=np.int64)
            for index, x, flips in epoch_batches(job.method, job.data, order, job.recipe, self.device, job.gen,
                                                 job.aug_gen):
                if drawn == count:
                    return
                drawn += 1
                yield self.batch(job, index, x, flips, labels=np.asarray(job.data.labels))

    def resume_state(self, in_epoch: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the next try needs to go on after this epoch (or, `in_epoch`, after the batches of
        the current one it says are done): every job's method and stream, the optimiser, the
        global generators and each extension's state by name."""
        self.learner.write_back()  # fused: each job's weights into its method, whose training_state holds them
        return {"epoch": self.epoch if in_epoch is None else self.epoch - 1, "step": self.step,
                "jobs": [{"method": job.method.training_state(), "order_rng": job.gen.get_state(),
                          "augment_rng": job.aug_gen.get_state(), "labels": torch.from_numpy(job.labels.copy())}
                         for job in self.jobs],
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "global_rng": random_state(),
                "extensions": {ext.name: state for ext in self.extensions if (state := ext.state_dict()) is not None},
                **({"in_epoch": in_epoch} if in_epoch is not None else {})}

    def hook(self, name: str, *args: Any) -> list[Any]:
        return [getattr(ext, name)(self, *args) for ext in self.extensions]


def fit(method: Trainable, data: DecodedSplit, *, recipe: Recipe, device: torch.device, log: RunLog,
        epoch_end: EpochEnd | None = None, resume: ResumePoint | None = None,
        validation: DecodedSplit | None = None) -> None:
    """Train `method` on `data` for `recipe.epochs` epochs, calling `epoch_end(epoch)` after every
    `recipe.eval_every`-th epoch and after the last (the runner evaluates there). With `resume`,
    the loop's state is saved there, and training goes on from where an earlier try saved it
    (benchmark.training.resume). `validation`: the source's validation split (SWAD reads its loss
    there). Raises what stopped the job (TrainingDiverged, an evaluation's error)."""
    if recipe.data_path == "per_sample":
        check_per_sample(data, method.augment_spec, method.name)
    job = LoopJob(method, data, recipe, log, epoch_end)
    run_loop([job], recipe, device, SingleModel, resume=resume, validation=validation,
             numerics=Numerics.from_recipe(device, recipe))
    if job.error is not None:
        raise job.error


def run_loop(jobs: list[LoopJob], recipe: Recipe, device: torch.device, learner: Callable[[Loop], Any], *,
             numerics: Numerics, resume: ResumePoint | None = None,
             validation: DecodedSplit | None = None) -> list[BaseException | None]:
    """Train `jobs` (one, or a fused group sharing `recipe` but the seed) with `learner`; each
    job's error or None. A job whose loss diverged or whose evaluation failed stops alone."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = recipe.cudnn_benchmark  # process-wide: jobs in a process run one by one
    for job in jobs:
        seed_everything(job.recipe.seed)  # each model initialised exactly as its job alone
        job.method.build(device, job.recipe.input_size, numerics, job.recipe.seed)
        job.labels = np.array(job.data.labels)
        job.gen = torch.Generator(device="cpu").manual_seed(job.recipe.seed)
        job.aug_gen = torch.Generator(device=device).manual_seed(job.recipe.seed + 1)
        job.resident = resident_split(job.data, job.recipe, device)
    batches_per_epoch = math.ceil((recipe.samples_per_epoch or len(jobs[0].data)) / recipe.batch_size)
    loop = Loop(jobs, recipe, device, numerics, batches_per_epoch * recipe.epochs, resume, validation)
    loop.extensions = [cls(recipe) for cls in recipe.extensions()]
    if len(jobs) > 1:
        alone = [ext.name for ext in loop.extensions if not ext.fuses]
        if alone:
            raise BenchmarkError(f"fused jobs cannot wear {', '.join(alone)}: its jobs train alone")
    try:
        _train(loop, learner)
    finally:
        loop.hook("close")
    return [job.error for job in jobs]


def _train(loop: Loop, make_learner: Callable[[Loop], Any]) -> None:
    jobs, recipe = loop.jobs, loop.recipe
    loop.hook("setup")
    saved = loop.resume.state if loop.resume is not None else None
    if saved is not None:  # each job's modules and draws, before a fused group stacks them
        for job, state in zip(jobs, saved["jobs"]):
            job.method.load_training_state(state["method"])
            job.gen.set_state(state["order_rng"])
            job.aug_gen.set_state(state["augment_rng"])
            job.labels[:] = state["labels"].numpy()
    loop.learner = make_learner(loop)
    settings = loop.method.optimizer_settings()
    for ext in loop.extensions:
        settings = ext.optimizer_settings(loop, settings)
    loop.settings = settings
    groups = loop.learner.param_groups()
    for ext in loop.extensions:
        groups = ext.param_groups(loop, groups)
    loop.optimizer, loop.scheduler = optimizer_for(groups, settings, recipe.adam_impl, loop.device, recipe.epochs,
                                                   loop.total_steps)
    per_step = steps_per_step(settings)
    first_epoch, in_epoch = 1, None
    if saved is not None:
        loop.optimizer.load_state_dict(saved["optimizer"])
        loop.scheduler.load_state_dict(saved["scheduler"])
        set_random_state(saved["global_rng"])
        loop.step, first_epoch, in_epoch = int(saved["step"]), int(saved["epoch"]) + 1, saved.get("in_epoch")
        for ext in loop.extensions:
            if ext.name in saved["extensions"]:
                ext.load_state_dict(saved["extensions"][ext.name])
    loop.hook("start")
    for epoch in range(first_epoch, recipe.epochs + 1):
        loop.epoch = epoch
        for job in jobs:
            job.method.train_mode(True)
        loop.hook("epoch_start")
        loop.epoch_started = time.perf_counter()
        if in_epoch is not None:  # written inside this epoch: its order, and the batches done skipped
            loop.orders = list(in_epoch["order"].numpy())
            loop.batches_done = int(in_epoch["batches"])
            loop.epoch_started -= float(in_epoch["seconds"])
            in_epoch = None
        else:
            loop.orders = [np.fromiter(epoch_sampler(job.data.labels, job.recipe, job.gen, job.data.domains),
                                       dtype=np.int64) for job in jobs]
            loop.batches_done = 0
        loop.batches_in_epoch = math.ceil(len(loop.orders[0]) / recipe.batch_size)
        skip = loop.batches_done * recipe.batch_size
        streams = [epoch_batches(job.method, job.data, order[skip:], job.recipe, loop.device, job.gen, job.aug_gen,
                                 job.resident) for job, order in zip(jobs, loop.orders)]
        for step_batches in zip(*streams):
            batches = [loop.batch(job, index, x, flips) for job, (index, x, flips) in zip(jobs, step_batches)]
            for ext in loop.extensions:
                batches = [ext.transform_batch(loop, batch) for batch in batches]
            losses, parts, objective = loop.learner.step(batches)
            loop.optimizer.zero_grad(set_to_none=True)
            objective.backward()
            loop.hook("after_backward", batches[0])
            clip_gradients(loop.optimizer, settings.grad_clip_norm)
            loop.optimizer.step()
            if per_step:
                loop.scheduler.step()
            for job, batch in zip(jobs, batches):
                change = job.method.after_step(batch, epoch)
                if change is not None:
                    job.labels[change.rows] = change.labels
            interrupt.check()  # a Ctrl-C swallowed by a garbage-collection callback stops the job here
            loop.step += 1
            loop.batches_done += 1
            loop.hook("after_step", batches[0], losses, parts)
            if loop.stop or not any(loop.alive()):
                break
        if not any(loop.alive()):
            return
        _end_epoch(loop, per_step)
        if loop.stop or not any(loop.alive()):
            break
    loop.learner.write_back()


def _end_epoch(loop: Loop, per_step: bool) -> None:
    """Log each job's epoch, evaluate it when due, then the extensions' epoch-end hooks."""
    jobs, recipe, epoch = loop.jobs, loop.recipe, loop.epoch
    per_job: list[dict[str, float]] = [{} for _ in jobs]
    for values in loop.hook("epoch_metrics"):
        for k, mine in enumerate(values if isinstance(values, list) else [values] * len(jobs)):
            per_job[k].update(mine)
    lr = loop.optimizer.param_groups[0]["lr"]
    seconds = time.perf_counter() - loop.epoch_started  # a fused group's: the K jobs' epochs ran as one
    if not per_step:
        loop.scheduler.step()
    loop.last_epoch = epoch == recipe.epochs or loop.stop
    final: dict[str, float] = {}
    if loop.last_epoch:
        loop.learner.write_back()
        for values in loop.hook("finish"):
            final.update(values)
    for job, values in zip(jobs, per_job):
        if job.error is None:
            job.log.metrics({**values, "lr": lr, "train/epoch_seconds": seconds, **job.method.epoch_metrics(), **final},
                            step=epoch)
    if evaluates_after(epoch, recipe) or loop.stop:
        loop.learner.write_back()
        for k, job in enumerate(jobs):
            if job.error is None and job.epoch_end is not None:
                try:
                    job.epoch_end(epoch)
                except Exception as exc:  # noqa: BLE001 - this job's evaluation failed; the others go on
                    loop.fail(k, exc)
    loop.hook("after_epoch")


def evaluates_after(epoch: int, recipe: Recipe) -> bool:
    """Whether the model is evaluated after `epoch`: every `recipe.eval_every` epochs (0: never
    in between) and always after the last."""
    return epoch == recipe.epochs or (recipe.eval_every > 0 and epoch % recipe.eval_every == 0)



def eval_inputs(data: DecodedSplit, rows, numerics: Numerics) -> torch.Tensor:
    """Rows `rows` (a slice or indices) of `data` as the model's evaluation input: on the device,
    normalised, in the numerics's memory layout."""
    return numerics.layout(normalize(to_device_batch(data.read(rows), numerics.device)))


@torch.no_grad()
def predict_batches(data: DecodedSplit, numerics: Numerics, batch_size: int,
                    logits_fn: Callable[[torch.Tensor, slice], torch.Tensor]) -> np.ndarray:
    """Softmax probabilities (N, C) over `data`, evaluated in order with the eval transform."""
    out = []
    for start in range(0, len(data), batch_size):
        rows = slice(start, min(len(data), start + batch_size))
        x = eval_inputs(data, rows, numerics)
        with numerics.autocast():
            logits = logits_fn(x, rows)
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(out).numpy()
