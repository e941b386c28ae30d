"""Horizontal fusion: K jobs of one method trained as one stacked model, each keeping its own numbers.

A grid repeats one architecture many times (sources x seeds); on a GPU each job's step is a few
hundred small kernels, launch-bound. Here the K jobs' trainable models are stacked
(`torch.func.stack_module_state`) and one step runs `vmap` over `functional_call` of the method's
own `training_step`, so each operator runs once over the K models. The gradient of the summed
losses is each model's own gradient, and one Adam over the stacked parameters is, elementwise,
the K jobs' Adams (same learning rate, weight decay and schedule: the jobs of a group share every
hyperparameter but seed and source).

Each job keeps what it has alone: its model initialised from its own seed (built exactly as
`trainer.fit` builds it), its own split, sampler, augmentation stream, training labels and the
method's own random draws (`step_extras`, drawn per job on the host), its per-epoch history and
evaluation. A frozen encoder shared by the jobs runs once on their batches concatenated. A job
whose loss becomes non-finite fails alone; the others train on. The arithmetic differs from the
unfused loop in the last bits (batched kernels, the encoder's batch size), as a thread count does.

Jobs fuse when their epochs have the same length (`recipe.samples_per_epoch`, or training
splits of one size), so that every step has K batches of one size; the runner groups them
(benchmark.run.runner.run_group).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..core.errors import BenchmarkError
from ..data.cache import DecodedSplit
from .execution import Execution, to_device_batch
from .method import Batch, EpochEnd, RunLog
from .recipe import Recipe
from .resume import EpochCheckpoint, random_state, set_random_state
from .trained_method import TrainedMethod
from .trainer import (StepMonitor, TrainingDiverged, epoch_batches, epoch_sampler, evaluates_after, optimizer_for,
                      resident_split, seed_everything)

_NO_ROWS = np.empty(0, dtype=np.int64)


class _StepModule(nn.Module):
    """The template method's `training_step` as a module whose parameters are its model's, so
    that `functional_call` can run it with each job's (stacked) parameters in their place."""

    def __init__(self, method: TrainedMethod):
        super().__init__()
        self.model = method.model
        object.__setattr__(self, "method", method)  # not a submodule: its model is registered once

    def forward(self, images, labels, extra):
        return self.method.training_step(Batch(images, labels, _NO_ROWS, extra=extra))


class FusedModels:
    """K built methods' trainable models as stacked parameters and buffers, and their step."""

    def __init__(self, methods: Sequence[TrainedMethod]):
        self.methods = list(methods)
        template = self.methods[0]
        self.params, self.buffers = torch.func.stack_module_state([m.model for m in self.methods])
        self._step = _StepModule(template)
        self._vmapped = torch.func.vmap(self._one, randomness="different")
        names = {id(p): n for n, p in template.model.named_parameters()}
        # The template's parameter groups (and their learning rates), on the stacked tensors.
        self.param_groups = [{**{k: v for k, v in group.items() if k != "params"},
                              "params": [self.params[names[id(p)]] for p in group["params"]]}
                             for group in template.param_groups()]

    def _one(self, params, buffers, images, labels, extra):
        state = {f"model.{k}": v for k, v in {**params, **buffers}.items()}
        return torch.func.functional_call(self._step, state, (images, labels, extra))

    def losses(self, batches: Sequence[Batch]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(K,) losses and {part: (K,)} of one step, batch k through model k."""
        images = torch.stack([b.images for b in batches])
        labels = torch.stack([b.labels for b in batches])
        extra = {key: torch.stack([b.extra[key] for b in batches]) for key in batches[0].extra}
        return self._vmapped(self.params, self.buffers, images, labels, extra)

    @torch.no_grad()
    def write_back(self) -> None:
        """Each job's parameters and buffers into its own method's model (to evaluate or save it)."""
        for k, method in enumerate(self.methods):
            for name, tensor in [*method.model.named_parameters(), *method.model.named_buffers()]:
                tensor.copy_((self.params if name in self.params else self.buffers)[name][k])


def recipe_but_seed(recipe: Recipe) -> dict:
    """What jobs of a fused group must share of their recipes: all of it but the seed."""
    return {**dataclasses.asdict(recipe), "seed": None}


def epoch_length(data: DecodedSplit, recipe: Recipe) -> int:
    """Samples per epoch: jobs fuse when theirs are equal (every step then has K batches of one size)."""
    return recipe.samples_per_epoch or len(data)


def check_fusable(methods: Sequence[TrainedMethod], datas: Sequence[DecodedSplit], recipes: Sequence[Recipe]) -> None:
    """Refuse a group the fused loop cannot train as the jobs would train alone."""
    first = methods[0]
    if not all(type(m) is type(first) and m.hparams == first.hparams for m in methods):
        raise BenchmarkError("fused jobs must share the method and every hyperparameter")
    if not type(first).fuses:
        raise BenchmarkError(f"method {first.name} does not fuse (its class sets fuses = False)")
    if len({epoch_length(d, r) for d, r in zip(datas, recipes)}) > 1:
        raise BenchmarkError("fused jobs must have epochs of one length (recipe.samples_per_epoch, or training "
                             "splits of one size): " + ", ".join(f"{d.dataset} {len(d)}" for d in datas))
    if any(recipe_but_seed(r) != recipe_but_seed(recipes[0]) for r in recipes):
        raise BenchmarkError("fused jobs must share the recipe except the seed")


@dataclass
class _Stream:
    """One job's own training state in the group: labels, generators, device-resident split."""

    data: DecodedSplit
    recipe: Recipe
    labels: np.ndarray
    gen: torch.Generator
    aug_gen: torch.Generator
    resident: torch.Tensor | None


def _encoder_features(methods: Sequence[TrainedMethod], batches: Sequence[Batch]) -> list[torch.Tensor]:
    """Each job's training features of the frozen encoder: one encoder call on the K batches
    concatenated when the encoder runs online (it is frozen and shared), else each job's cached ones."""
    if all(m.encodes_online for m in methods):
        features = methods[0].components.encoder(torch.cat([b.images for b in batches]))
        return list(features.split([len(b.labels) for b in batches]))
    return [m.encoder_features(b) for m, b in zip(methods, batches)]


def fit_fused(methods: Sequence[TrainedMethod], datas: Sequence[DecodedSplit], *, recipes: Sequence[Recipe],
              device: torch.device, logs: Sequence[RunLog],
              epoch_ends: Sequence[EpochEnd | None], resume: EpochCheckpoint | None = None) -> list[BaseException | None]:
    """Train the K jobs together; job k as `methods[k].fit(datas[k], recipe=recipes[k], ...)` would.

    Returns each job's error (None: trained). A job whose loss became non-finite, or whose
    `epoch_end` raised, stops there (its error returned); the others go on. Any other error
    stops the whole group and is raised. With `resume`, the group's state is saved after every
    epoch but the last while all K train, and a group an earlier try saved goes on from there.
    """
    check_fusable(methods, datas, recipes)
    recipe = recipes[0]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = recipe.cudnn_benchmark
    # Not compiled: torch.compile of a vmapped functional_call is another program than the job's.
    execution = Execution.resolve(device, recipe.precision, recipe.channels_last)
    streams = []
    for method, data, job_recipe in zip(methods, datas, recipes):
        seed_everything(job_recipe.seed)  # each model initialised exactly as its job alone
        method.build(device, job_recipe.input_size, execution, job_recipe.seed)
        streams.append(_Stream(data, job_recipe, np.array(data.labels),
                               torch.Generator(device="cpu").manual_seed(job_recipe.seed),
                               torch.Generator(device=device).manual_seed(job_recipe.seed + 1),
                               resident_split(data, job_recipe, device)))
    saved = resume.state if resume is not None else None
    if saved is not None:  # each job's modules and draws, before they are stacked
        for method, state in zip(methods, saved["methods"]):
            method.load_training_state(state)
        for stream, state in zip(streams, saved["streams"]):
            stream.gen.set_state(state["order_rng"])
            stream.aug_gen.set_state(state["augment_rng"])
            stream.labels[:] = state["labels"].numpy()
    with contextlib.ExitStack() as features:
        for method, stream in zip(methods, streams):
            features.enter_context(method.training_features(stream.data, stream.recipe, device))
        return _train(methods, streams, recipe, execution, device, logs, epoch_ends, resume)


def _train(methods, streams, recipe, execution, device, logs, epoch_ends, resume) -> list[BaseException | None]:
    fused = FusedModels(methods)
    settings = methods[0].optimizer_settings()
    optimizer, scheduler = optimizer_for(fused.param_groups, settings, recipe, device)
    errors: list[BaseException | None] = [None] * len(methods)
    alive = torch.ones(len(methods), dtype=torch.bool, device=device)
    monitor = StepMonitor(device, models=len(methods))
    encoder = methods[0].trains_on_encoder()

    def stop_diverged(epoch: int) -> None:
        for k, (step, loss) in monitor.diverged().items():
            if errors[k] is None:
                errors[k] = TrainingDiverged(f"{methods[k].name}: loss is {loss} at epoch {epoch}, step {step}")
                alive[k] = False

    step, first_epoch = 0, 1
    if resume is not None and resume.state is not None:
        saved = resume.state
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_random_state(saved["global_rng"])
        step, first_epoch = int(saved["step"]), int(saved["epoch"]) + 1
    for epoch in range(first_epoch, recipe.epochs + 1):
        methods[0].train_mode(True)  # the template's modules run every job's step
        start = time.perf_counter()
        batch_streams = []
        for method, s in zip(methods, streams):
            order = np.fromiter(epoch_sampler(s.data.labels, s.recipe, s.gen, s.data.domains), dtype=np.int64)
            batch_streams.append(epoch_batches(method, s.data, order, s.recipe, device, s.gen, s.aug_gen, s.resident))
        for step_batches in zip(*batch_streams):
            batches = []
            for method, s, (index, x, flips) in zip(methods, streams, step_batches):
                domains = None if s.data.domains is None else to_device_batch(s.data.domains[index], device)
                batches.append(method.with_extras(Batch(execution.layout(x), to_device_batch(s.labels[index], device),
                                                        index, flips, domains)))
            if encoder:
                for batch, feature in zip(batches, _encoder_features(methods, batches)):
                    batch.extra["encoder"] = feature
            with execution.autocast():
                losses, parts = fused.losses(batches)
            optimizer.zero_grad(set_to_none=True)
            # A diverged job's loss is left out: its gradient is zero, the others' are untouched.
            torch.where(alive, losses, torch.zeros_like(losses)).sum().backward()
            optimizer.step()
            monitor.add(step, losses, parts)
            step += 1
            if step % recipe.sync_every == 0:
                stop_diverged(epoch)
                if not alive.any():
                    return errors
        stop_diverged(epoch)
        seconds = time.perf_counter() - start
        means = monitor.epoch_means_per_model()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        evaluate = evaluates_after(epoch, recipe)
        if evaluate:
            fused.write_back()
        for k, (method, log) in enumerate(zip(methods, logs)):
            if errors[k] is not None:
                continue
            # The group's epoch time: the K jobs' epochs ran as one.
            log.metrics({**means[k], "lr": lr, "train/epoch_seconds": seconds, **method.epoch_metrics()}, step=epoch)
            if evaluate and epoch_ends[k] is not None:
                try:
                    epoch_ends[k](epoch)
                except Exception as exc:  # noqa: BLE001 - this job's evaluation failed; the others go on
                    errors[k] = exc
                    alive[k] = False
        if not alive.any():
            break
        if resume is not None and epoch < recipe.epochs and all(e is None for e in errors) and resume.due():
            fused.write_back()  # each job's weights into its method, whose training_state holds them
            resume.save({"epoch": epoch, "step": step, "methods": [m.training_state() for m in methods],
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "streams": [{"order_rng": s.gen.get_state(), "augment_rng": s.aug_gen.get_state(),
                                      "labels": torch.from_numpy(s.labels.copy())} for s in streams],
                         "global_rng": random_state()})
    fused.write_back()
    return errors
