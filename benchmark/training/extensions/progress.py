"""The progress bar: tqdm over the job's optimiser steps (`recipe.progress`, on by default; it
changes no number, so it is not in the job hash)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import TrainingExtension, register_extension


@register_extension
class Progress(TrainingExtension):
    name = "progress"
    execution_only = ("progress",)
    order = 90

    @dataclass(frozen=True)
    class Options:
        progress: bool = True

    @classmethod
    def is_active(cls, recipe: Any) -> bool:
        return recipe.progress

    def start(self, loop: Any) -> None:
        from tqdm import tqdm

        names = ", ".join(sorted({job.data.dataset for job in loop.jobs}))
        self.bar = tqdm(total=loop.total_steps, desc=f"{loop.method.name} on {names}", unit="step", leave=False,
                        initial=loop.step)

    def after_step(self, loop: Any, batch: Any, losses: Any, parts: Any) -> None:
        if loop.step % self.recipe.sync_every == 0:  # the host looks at the loss then anyway
            self.bar.set_postfix(epoch=loop.epoch, loss=f"{float(losses.detach().float().mean()):.3f}")
        self.bar.update(1)

    def close(self, loop: Any) -> None:
        if hasattr(self, "bar"):
            self.bar.close()
