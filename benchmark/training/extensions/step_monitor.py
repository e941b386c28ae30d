"""The step monitor: the per-epoch loss sums and the non-finite check, kept on the device.

Reading a loss on the host (`float(loss)`, `if not isfinite(loss)`) makes the CPU wait for the
GPU every step, so the next batch cannot be queued behind the current one. Here the sums and
the first non-finite step stay device tensors, one entry per job of the loop (a fused group
has several); the host looks every `sync_every` steps and at the end of the epoch, so a
diverged job still stops within the epoch, naming the step where its loss first became
non-finite, and the other jobs of its group train on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...core.errors import BenchmarkError
from .base import TrainingExtension, check, register_extension


class TrainingDiverged(BenchmarkError):
    """The loss became NaN or infinite: the job stops instead of training on garbage."""


class StepMonitor:
    """Loss sums and the first non-finite step of `models` jobs, on `device`."""

    def __init__(self, device: torch.device, models: int = 1):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.batches = 0
        self._first_bad = torch.full((models,), -1, dtype=torch.long, device=device)
        self._bad_loss = torch.zeros((models,), dtype=torch.float64, device=device)

    def add(self, step: int, losses: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        """`losses`: (models,), `parts`: {name: (models,)} of the 0-based step `step`."""
        losses = losses.detach()
        first = (self._first_bad < 0) & ~torch.isfinite(losses)
        self._first_bad = torch.where(first, step, self._first_bad)
        self._bad_loss = torch.where(first, losses.double(), self._bad_loss)
        for key, value in {"loss": losses, **parts}.items():
            value = torch.as_tensor(value, device=self.device).detach().double()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.batches += 1

    def diverged(self) -> dict[int, tuple[int, float]]:
        """{job's position: (first non-finite step, its loss)} (one host sync)."""
        first, loss = self._first_bad.cpu(), self._bad_loss.cpu()
        return {k: (int(first[k]), float(loss[k])) for k in torch.nonzero(first >= 0).flatten().tolist()}

    def epoch_means(self) -> list[dict[str, float]]:
        """Each job's mean of every loss part over the epoch (one host sync), and a fresh start."""
        models = len(self._first_bad)
        sums = {k: (v.cpu().expand(models) / max(1, self.batches)).tolist() for k, v in self.sums.items()}
        self.sums, self.batches = {}, 0
        return [{f"train/{k}": v[m] for k, v in sums.items()} for m in range(models)]

    def state_dict(self) -> dict[str, Any]:
        """The epoch's sums so far (a resume state written inside an epoch)."""
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "batches": self.batches,
                "first_bad": self._first_bad.cpu(), "bad_loss": self._bad_loss.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = {k: v.to(self.device) for k, v in state["sums"].items()}
        self.batches = int(state["batches"])
        self._first_bad, self._bad_loss = state["first_bad"].to(self.device), state["bad_loss"].to(self.device)


@register_extension
class StepMonitorExtension(TrainingExtension):
    name = "step_monitor"
    execution_only = ("sync_every",)
    order = 0  # first: the losses are summed before any other hook looks at the step

    @dataclass(frozen=True)
    class Options:
        sync_every: int = 50  # steps between the host's looks at the loss (non-finite check, progress bar)

    @classmethod
    def validate(cls, recipe: Any) -> None:
        check(recipe.sync_every > 0, f"recipe.sync_every = {recipe.sync_every}; must be positive")

    @classmethod
    def is_active(cls, recipe: Any) -> bool:
        return True

    def setup(self, loop: Any) -> None:
        self.monitor = StepMonitor(loop.device, len(loop.jobs))

    def _stop_diverged(self, loop: Any) -> None:
        for k, (step, loss) in self.monitor.diverged().items():
            loop.fail(k, TrainingDiverged(f"{loop.jobs[k].method.name}: loss is {loss} at epoch {loop.epoch}, "
                                          f"step {step}"))

    def after_step(self, loop: Any, batch: Any, losses: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        self.monitor.add(loop.step - 1, losses, parts)
        if loop.step % self.recipe.sync_every == 0:
            self._stop_diverged(loop)

    def epoch_metrics(self, loop: Any) -> list[dict[str, float]]:
        self._stop_diverged(loop)
        return self.monitor.epoch_means()

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state)
