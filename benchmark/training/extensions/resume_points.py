"""Resume points: the loop's state written after an epoch (and, when asked, between two batches),
so a stopped job goes on from there (benchmark.training.resume says what, where and how often).

Active whenever the runner passes a `ResumePoint` (`loop.resume`); the state itself is the
loop's (`loop.resume_state`), which collects every extension's `state_dict` by name without
knowing what is inside. A write that fails (a full disk, an upload refused) warns once and
training goes on: the job's result is never lost for want of a resume point.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

from .base import TrainingExtension, register_extension


@register_extension
class ResumePoints(TrainingExtension):
    name = "resume_points"
    order = 100  # last: the state holds what every other hook did in the step or epoch

    @classmethod
    def is_active(cls, recipe: Any) -> bool:
        return True

    def start(self, loop: Any) -> None:
        self.resume = loop.resume
        self.warned = False
        # Written inside an epoch only on the cache data path, whose order is drawn whole up front.
        self.mid_epoch = (self.resume is not None and self.resume.mid_epoch_s is not None
                          and self.recipe.data_path != "per_sample")

    def _save(self, loop: Any, in_epoch: dict[str, Any] | None = None) -> None:
        try:
            self.resume.save(loop.resume_state(in_epoch))
        except Exception as exc:  # noqa: BLE001 - a lost resume point costs time on a stop, never the result
            if not self.warned:
                self.warned = True
                warnings.warn(f"{loop.method.name}: could not write the resume point to {self.resume.where} "
                              f"({type(exc).__name__}: {exc}); training goes on, and a stop would resume from an "
                              "earlier point or the start", stacklevel=2)

    def after_step(self, loop: Any, batch: Any, losses: Any, parts: Any) -> None:
        if (self.mid_epoch and not loop.stop and loop.batches_done < loop.batches_in_epoch
                and loop.all_alive() and self.resume.due_in_epoch()):
            self._save(loop, {"batches": loop.batches_done, "of": loop.batches_in_epoch, "order": loop.epoch_order(),
                              "seconds": time.perf_counter() - loop.epoch_started})

    def after_epoch(self, loop: Any) -> None:
        if self.resume is not None and not loop.last_epoch and loop.all_alive() and self.resume.due():
            self._save(loop)
