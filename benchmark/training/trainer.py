"""The training loop every trained method shares: the paper's recipe, seeding, batching, logging.

The recipe (benchmark.training.recipe): Adam with L2 weight decay, ExponentialLR stepped once per epoch, the paper's
augmentations (benchmark.training.augment), shuffled batches or a class-balanced sampler with a fixed
number of samples per epoch. All randomness (weights init, order, augmentation, CAFE's drop
masks) comes from the job's seed, so the same job on CPU gives identical numbers.

The loop sees a method only through `Trainable`; it owns the training labels (a copy of the
split's) and hands each step a `Batch`.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch.utils.data import RandomSampler, WeightedRandomSampler

from . import finetune
from .augment import AugmentSpec, augment, normalize
from ..data.cache import DecodedSplit
from ..core import interrupt
from ..core.errors import BenchmarkError
from .execution import Execution, host_batch, to_device_batch
from .method import Batch, EpochEnd, OptimizerSettings, Relabel, RunLog
from .per_sample import check_per_sample, per_sample_batches
from .prefetch import prefetched
from .recipe import Recipe
from .recipes import mixstyle
from .recipes.sam import SharpnessAware, running_stats_frozen
from .recipes.swad import LossValley, Swad, recompute_bn, valley_figure
from .resume import EpochCheckpoint, random_state, set_random_state


class Trainable(Protocol):
    """What the loop needs of a method (benchmark.training.trained_method.TrainedMethod provides it)."""

    name: str
    augment_spec: AugmentSpec

    def build(self, device: torch.device, input_size: int, execution: Execution, seed: int) -> None: ...

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


class TrainingDiverged(BenchmarkError):
    """The loss became NaN or infinite: the job stops instead of training on garbage."""


# recipe.data_on_device = "auto" holds the decoded split on the GPU when it takes at most this
# share of the GPU's free memory (the rest is left to the models and to jobs packed beside it).
RESIDENT_SHARE = 0.25


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


def optimizer_for(param_groups: list[dict[str, Any]], settings: OptimizerSettings, recipe: Recipe,
                  device: torch.device, model: torch.nn.Module | None = None,
                  total_steps: int = 0) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The method's optimiser (Adam, or SGD with momentum, with L2 weight decay) and its schedule,
    stepped once per epoch: ExponentialLR, or StepLR when the rate drops every `lr_step` epochs.
    The recipe's fine-tuning options (benchmark.training.finetune) change them where set: AdamW,
    a per-step warmup + cosine schedule (see `steps_per_step`), groups split by backbone and decay."""
    param_groups = finetune.split_groups(param_groups, model, settings, recipe)
    if recipe.optimizer == "adamw" or settings.optimizer == "adamw":
        optimizer = finetune.adamw(param_groups, settings, adam_kernels(recipe.adam_impl, device))
        return optimizer, _schedule(optimizer, settings, recipe, total_steps)
    if settings.optimizer == "sgd":
        optimizer = torch.optim.SGD(param_groups, lr=settings.lr, momentum=settings.momentum,
                                    weight_decay=settings.weight_decay)
    elif settings.optimizer == "adam":
        optimizer = torch.optim.Adam(param_groups, lr=settings.lr, weight_decay=settings.weight_decay,
                                     **adam_kernels(recipe.adam_impl, device))
    else:
        raise BenchmarkError(f"optimizer {settings.optimizer!r}: expected adam or sgd")
    return optimizer, _schedule(optimizer, settings, recipe, total_steps)


def _schedule(optimizer: torch.optim.Optimizer, settings: OptimizerSettings, recipe: Recipe,
              total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if recipe.schedule == "warmup_cosine":
        return finetune.warmup_cosine(optimizer, recipe.warmup_steps, total_steps)
    if settings.schedule == "warmup_cosine_steps":
        return finetune.warmup_cosine(optimizer, settings.warmup_steps, total_steps)
    if settings.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)
    if settings.schedule == "warmup_cosine_epochs":
        epochs, warm = recipe.epochs, settings.warmup_lr / settings.lr
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: warm if e == 0 else 0.5 * (1 + math.cos(math.pi * (e - 1) / epochs)))
    if settings.schedule != "decay":
        raise BenchmarkError(f"schedule {settings.schedule!r}: expected decay, cosine, warmup_cosine_epochs or "
                             "warmup_cosine_steps")
    if settings.lr_step > 1:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step, gamma=settings.lr_gamma)
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=settings.lr_gamma)


def steps_per_step(recipe: Recipe, settings: OptimizerSettings | None = None) -> bool:
    """Whether the schedule steps after every optimiser step (warmup_cosine) rather than every epoch."""
    return recipe.schedule == "warmup_cosine" or (settings is not None and settings.schedule == "warmup_cosine_steps")


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


class StepMonitor:
    """The per-epoch loss sums and the non-finite check, kept on the device.

    Reading a loss on the host (`float(loss)`, `if not isfinite(loss)`) makes the CPU wait for the
    GPU every step, so the next batch cannot be queued behind the current one. Here the sums and
    the first non-finite step stay device tensors; the host looks every `sync_every` steps and at
    the end of the epoch, so a diverged job still stops within the epoch, naming the step where
    the loss first became non-finite.

    Fused jobs (benchmark.training.fused) keep one monitor for all `models`: the losses are then
    vectors, one entry per job, and `diverged` / `epoch_means_per_model` read them per job.
    """

    def __init__(self, device: torch.device, models: int | None = None):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.batches = 0
        shape = () if models is None else (models,)
        self._first_bad = torch.full(shape, -1, dtype=torch.long, device=device)
        self._bad_loss = torch.zeros(shape, dtype=torch.float64, device=device)

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

    def diverged(self) -> dict[int, tuple[int, float]]:
        """Fused jobs: {job's position: (first non-finite step, its loss)} (one host sync)."""
        first, loss = self._first_bad.cpu(), self._bad_loss.cpu()
        return {k: (int(first[k]), float(loss[k])) for k in torch.nonzero(first >= 0).flatten().tolist()}

    def state_dict(self) -> dict[str, Any]:
        """The epoch's sums so far (a checkpoint written inside an epoch: benchmark.training.resume)."""
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "batches": self.batches,
                "first_bad": self._first_bad.cpu(), "bad_loss": self._bad_loss.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = {k: v.to(self.device) for k, v in state["sums"].items()}
        self.batches = int(state["batches"])
        self._first_bad, self._bad_loss = state["first_bad"].to(self.device), state["bad_loss"].to(self.device)

    def mean_loss(self) -> float:
        return float(self.sums["loss"].mean()) / max(1, self.batches)

    def epoch_means(self) -> dict[str, float]:
        """The epoch's mean of each loss part (one host sync), and a fresh start for the next."""
        means = {f"train/{k}": float(v) / max(1, self.batches) for k, v in self.sums.items()}
        self.sums, self.batches = {}, 0
        return means

    def epoch_means_per_model(self) -> list[dict[str, float]]:
        """Fused jobs: epoch_means of each job, in the group's order (one host sync)."""
        sums = {k: (v.cpu() / max(1, self.batches)).tolist() for k, v in self.sums.items()}
        models = len(self._first_bad)
        self.sums, self.batches = {}, 0
        return [{f"train/{k}": v[m] for k, v in sums.items()} for m in range(models)]


def fit(method: Trainable, data: DecodedSplit, *, recipe: Recipe, device: torch.device, log: RunLog,
        epoch_end: EpochEnd | None = None, resume: EpochCheckpoint | None = None,
        validation: DecodedSplit | None = None) -> None:
    """Train `method` on `data` for `recipe.epochs` epochs, calling `epoch_end(epoch)` after every
    `recipe.eval_every`-th epoch and after the last (the runner evaluates there). With `resume`,
    the state after each epoch but the last is saved there, and training goes on from the epoch
    after the one an earlier try saved (benchmark.training.resume). `validation`: the source's
    validation split, which SWAD (recipe.swad) reads its loss on; SWAD may end training early,
    and the model evaluated after the last epoch is then its average."""
    seed_everything(recipe.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = recipe.cudnn_benchmark  # process-wide: jobs in a process run one by one
    execution = Execution.from_recipe(device, recipe)
    method.build(device, recipe.input_size, execution, recipe.seed)
    train_labels = np.array(data.labels)  # a private copy: methods may relabel, the cache never changes
    if recipe.data_path == "per_sample":
        check_per_sample(data, method.augment_spec, method.name)
    settings = method.optimizer_settings()
    model = getattr(method, "model", None)
    finetune.enable_checkpointing(model, recipe)
    mixstyle.insert(model, recipe.mixstyle, recipe.mixstyle_p, recipe.mixstyle_alpha)
    total_steps = math.ceil((recipe.samples_per_epoch or len(data)) / recipe.batch_size) * recipe.epochs
    optimizer, scheduler = optimizer_for(method.param_groups(), settings, recipe, device, model, total_steps)
    per_step = steps_per_step(recipe, settings)
    sam = SharpnessAware(optimizer, recipe.sam_rho, recipe.sam_adaptive) if recipe.sam_rho else None
    swad = None
    if recipe.swad:
        if validation is None:
            raise BenchmarkError(f"{method.name}: recipe.swad finds its averaging window on the source's validation "
                                 "split, and this job has none: set recipe.val_fraction (e.g. 0.2, upstream's hold-out)")
        swad = Swad(model, recipe.swad_eval_steps, LossValley(recipe.swad_n_converge, recipe.swad_n_tolerance,
                                                              recipe.swad_tolerance_ratio, recipe.swad_quirks))
    gen = torch.Generator(device="cpu").manual_seed(recipe.seed)
    aug_gen = torch.Generator(device=device).manual_seed(recipe.seed + 1)
    resident = resident_split(data, recipe, device)
    bar = None
    if recipe.progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, desc=f"{method.name} on {data.dataset}", unit="step", leave=False)
    monitor = StepMonitor(device)
    step, first_epoch, in_epoch = 0, 1, None
    mid_epoch = resume is not None and resume.mid_epoch_s is not None and recipe.data_path != "per_sample"
    if resume is not None and resume.state is not None:
        saved = resume.state
        in_epoch = resume.in_epoch
        method.load_training_state(saved["method"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        gen.set_state(saved["order_rng"])
        aug_gen.set_state(saved["augment_rng"])
        set_random_state(saved["global_rng"])
        train_labels[:] = saved["train_labels"].numpy()
        step, first_epoch = int(saved["step"]), int(saved["epoch"]) + 1
        if swad is not None:
            swad.load_state_dict(saved["swad"])
        if bar is not None:
            bar.update(step)

    def state(epoch_done: int) -> dict[str, Any]:
        """What the next try needs to go on after epoch `epoch_done` (and the batches of the next
        that `in_epoch`, when written inside it, says are done)."""
        return {"epoch": epoch_done, "step": step, "method": method.training_state(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "order_rng": gen.get_state(), "augment_rng": aug_gen.get_state(),
                "global_rng": random_state(), "train_labels": torch.from_numpy(train_labels.copy()),
                **({"swad": swad.state_dict()} if swad is not None else {})}

    stopped = False  # SWAD's loss valley ended before the last epoch
    for epoch in range(first_epoch, recipe.epochs + 1):
        method.train_mode(True)
        start = time.perf_counter()
        if in_epoch is not None:  # written inside this epoch: its order, and the batches done skipped
            order, done = in_epoch["order"].numpy(), int(in_epoch["batches"])
            monitor.load_state_dict(in_epoch["losses"])
            start -= float(in_epoch["seconds"])
            in_epoch = None
        else:
            order = np.fromiter(epoch_sampler(data.labels, recipe, gen, data.domains), dtype=np.int64)
            done = 0
        batches = math.ceil(len(order) / recipe.batch_size)
        for index, x, flips in epoch_batches(method, data, order[done * recipe.batch_size:], recipe, device, gen,
                                             aug_gen, resident):
            domains = None if data.domains is None else to_device_batch(data.domains[index], device)
            batch = method.with_extras(Batch(execution.layout(x), to_device_batch(train_labels[index], device), index,
                                             flips, domains))
            with execution.autocast():
                loss, parts = method.training_step(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if sam is not None:  # the second pass at w + e; the step below uses its gradient at w
                sam.ascend()
                with running_stats_frozen(model), execution.autocast():
                    method.training_step(batch)[0].backward()
                sam.descend()
            finetune.clip_gradients(optimizer, recipe.grad_clip_norm or settings.grad_clip_norm)
            optimizer.step()
            if per_step:
                scheduler.step()
            change = method.after_step(batch, epoch)
            if change is not None:
                train_labels[change.rows] = change.labels
            monitor.add(step, loss, parts)
            interrupt.check()  # a Ctrl-C swallowed by a garbage-collection callback stops the job here
            if swad is not None:
                swad.after_step(step)
                if swad.due(step):
                    stopped = swad.end_segment(step, validation_loss(method, validation))
            step += 1
            if step % recipe.sync_every == 0:
                monitor.check(method.name, epoch)
                if bar is not None:
                    bar.set_postfix(epoch=epoch, loss=f"{monitor.mean_loss():.3f}")
            if bar is not None:
                bar.update(1)
            if stopped:
                break
            done += 1
            if mid_epoch and done < batches and resume.due_in_epoch():
                resume.save({**state(epoch - 1), "in_epoch": {
                    "batches": done, "of": batches, "order": torch.from_numpy(order), "losses": monitor.state_dict(),
                    "seconds": time.perf_counter() - start}})
        monitor.check(method.name, epoch)
        metrics = monitor.epoch_means()
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        metrics["train/epoch_seconds"] = time.perf_counter() - start
        metrics.update(method.epoch_metrics())
        if not per_step:
            scheduler.step()
        last = epoch == recipe.epochs or stopped
        if swad is not None and last:
            metrics.update(_swad_model(swad, method, data, validation, recipe, execution, device, gen, aug_gen,
                                       step, stopped, log))
        log.metrics(metrics, step=epoch)
        if epoch_end is not None and (evaluates_after(epoch, recipe) or stopped):
            epoch_end(epoch)
        if resume is not None and not last and resume.due():
            resume.save(state(epoch))
        if stopped:
            break
    if bar is not None:
        bar.close()


def validation_loss(method: Trainable, validation: DecodedSplit) -> float:
    """Mean cross-entropy of the model's probabilities on the validation split (SWAD's signal)."""
    from sklearn.metrics import log_loss

    probs = method.predict(validation)
    return float(log_loss(validation.labels, probs, labels=list(range(probs.shape[1]))))


def _swad_model(swad: Swad, method: Trainable, data: DecodedSplit, validation: DecodedSplit, recipe: Recipe,
                execution: Execution, device: torch.device, gen: torch.Generator, aug_gen: torch.Generator,
                step: int, stopped: bool, log: RunLog) -> dict[str, float]:
    """Put SWAD's averaged weights into the method's model at the end of training: the segment
    still open closes first (its loss taken now), BatchNorm statistics are recomputed when
    `recipe.swad_bn_batches` asks; the summary metrics, and a figure of the valley."""
    if not stopped and swad.segment.n_averaged:
        swad.end_segment(step - 1, validation_loss(method, validation))
    final = swad.apply()
    if recipe.swad_bn_batches:
        def batches():
            drawn = 0
            while True:
                order = np.fromiter(epoch_sampler(data.labels, recipe, gen, data.domains), dtype=np.int64)
                for index, x, flips in epoch_batches(method, data, order, recipe, device, gen, aug_gen):
                    if drawn == recipe.swad_bn_batches:
                        return
                    drawn += 1
                    yield Batch(execution.layout(x), to_device_batch(data.labels[index], device), index, flips,
                                None if data.domains is None else to_device_batch(data.domains[index], device))

        def forward(batch: Batch) -> None:
            with execution.autocast():
                method.training_step(method.with_extras(batch))

        recompute_bn(swad.model, batches(), forward)
    summary = swad.summary(final)
    log.figure("swad_valley.png", valley_figure(swad.trace, swad.valley, final))
    return summary


def evaluates_after(epoch: int, recipe: Recipe) -> bool:
    """Whether the model is evaluated after `epoch`: every `recipe.eval_every` epochs (0: never
    in between) and always after the last."""
    return epoch == recipe.epochs or (recipe.eval_every > 0 and epoch % recipe.eval_every == 0)


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
