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

The group trains in the shared loop (benchmark.training.trainer.run_loop) with `FusedModels` as
its learner, so every extension that fuses (the step monitor, the progress bar, resume points,
mid-epoch ones included) holds for it as for one job; one that cannot fuse is refused before
training.

Jobs fuse when their epochs have the same length (`recipe.samples_per_epoch`, or training
splits of one size), so that every step has K batches of one size; the runner groups them
(benchmark.run.runner.run_group).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..core.errors import BenchmarkError
from ..data.cache import DecodedSplit
from .numerics import Numerics
from .method import Batch, EpochEnd, RunLog
from .recipe import Recipe
from .resume import ResumePoint
from .trained_method import TrainedMethod
from .trainer import Loop, LoopJob, run_loop

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
    """K built methods' trainable models as stacked parameters and buffers, and their step: the
    loop's learner for a fused group."""

    def __init__(self, methods: Sequence[TrainedMethod], loop: Loop | None = None):
        self.methods = list(methods)
        template = self.methods[0]
        self.loop = loop
        self.params, self.buffers = torch.func.stack_module_state([m.model for m in self.methods])
        self._step = _StepModule(template)
        self._vmapped = torch.func.vmap(self._one, randomness="different")
        names = {id(p): n for n, p in template.model.named_parameters()}
        # The template's parameter groups (and their learning rates), on the stacked tensors.
        self._groups = [{**{k: v for k, v in group.items() if k != "params"},
                         "params": [self.params[names[id(p)]] for p in group["params"]]}
                        for group in template.param_groups()]

    @classmethod
    def for_loop(cls, loop: Loop) -> "FusedModels":
        return cls([job.method for job in loop.jobs], loop)

    def param_groups(self) -> list[dict[str, Any]]:
        return self._groups

    def _one(self, params, buffers, images, labels, extra):
        state = {f"model.{k}": v for k, v in {**params, **buffers}.items()}
        return torch.func.functional_call(self._step, state, (images, labels, extra))

    def losses(self, batches: Sequence[Batch]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(K,) losses and {part: (K,)} of one step, batch k through model k."""
        images = torch.stack([b.images for b in batches])
        labels = torch.stack([b.labels for b in batches])
        extra = {key: torch.stack([b.extra[key] for b in batches]) for key in batches[0].extra}
        return self._vmapped(self.params, self.buffers, images, labels, extra)

    def step(self, batches: Sequence[Batch]) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """The loop's step: (K,) losses, their parts, and the objective whose gradient is each live
        job's own (a stopped job's loss is left out: its gradient is zero, the others' untouched)."""
        if self.methods[0].trains_on_encoder():
            for batch, feature in zip(batches, _encoder_features(self.methods, batches)):
                batch.extra["encoder"] = feature
        with self.loop.numerics.autocast():
            losses, parts = self.losses(batches)
        alive = torch.tensor(self.loop.alive(), device=losses.device)
        return losses.detach(), parts, torch.where(alive, losses, torch.zeros_like(losses)).sum()

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


def _encoder_features(methods: Sequence[TrainedMethod], batches: Sequence[Batch]) -> list[torch.Tensor]:
    """Each job's training features of the frozen encoder: one encoder call on the K batches
    concatenated when the encoder runs online (it is frozen and shared), else each job's cached ones."""
    if all(m.encodes_online for m in methods):
        features = methods[0].components.encoder(torch.cat([b.images for b in batches]))
        return list(features.split([len(b.labels) for b in batches]))
    return [m.encoder_features(b) for m, b in zip(methods, batches)]


def fit_fused(methods: Sequence[TrainedMethod], datas: Sequence[DecodedSplit], *, recipes: Sequence[Recipe],
              device: torch.device, logs: Sequence[RunLog],
              epoch_ends: Sequence[EpochEnd | None], resume: ResumePoint | None = None) -> list[BaseException | None]:
    """Train the K jobs together; job k as `methods[k].fit(datas[k], recipe=recipes[k], ...)` would.

    Returns each job's error (None: trained). A job whose loss became non-finite, or whose
    `epoch_end` raised, stops there (its error returned); the others go on. Any other error
    stops the whole group and is raised. With `resume`, the group's state is saved as one job's
    is, and a group an earlier try saved goes on from there (mid-epoch points included).
    """
    check_fusable(methods, datas, recipes)
    recipe = recipes[0]
    # Not compiled: torch.compile of a vmapped functional_call is another program than the job's.
    numerics = Numerics.resolve(device, recipe.precision, recipe.channels_last)
    jobs = [LoopJob(m, d, r, log, end) for m, d, r, log, end in zip(methods, datas, recipes, logs, epoch_ends)]
    with contextlib.ExitStack() as features:
        for job in jobs:
            features.enter_context(job.method.training_features(job.data, job.recipe, device))
        return run_loop(jobs, recipe, device, FusedModels.for_loop, resume=resume, numerics=numerics)
