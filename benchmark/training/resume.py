"""A job's training state after each epoch, so a job stopped between epochs trains on from the
next one instead of from its first (a Slurm task warned before preemption or its time limit is
requeued: benchmark.run.executors.slurm).

After every epoch but the last the loop saves what the next epoch depends on: the trainable
modules and the method's own random draws, the optimiser and its schedule, every generator the
loop draws from (order, augmentation, torch's, NumPy's and Python's global ones), the training
labels (SCN relabels them) and the step count. A later try of the same job loads it and goes on:
on the same machine type and thread count its numbers equal an uninterrupted run's, bit for bit.

The file is `<folder>/<job hash>.pt`, written whole and then renamed over the old one (a stop
mid-write leaves the previous epoch's), read with `torch.load(weights_only=True)`, and deleted
when the job ends (FINISHED or FAILED): only a stopped job leaves one.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import BenchmarkError


@dataclass
class EpochCheckpoint:
    path: Path
    job_hash: str
    run_id: str  # the run this try writes (the next try copies its history from it)
    state: dict[str, Any] | None = None  # what an earlier try saved: resume after state["epoch"]

    @classmethod
    def open(cls, folder: str | Path, job_hash: str, run_id: str) -> "EpochCheckpoint":
        """The job's checkpoint in `folder`, with what an earlier try saved there (if anything)."""
        path = Path(folder) / f"{job_hash}.pt"
        state = None
        if path.is_file():
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - unreadable: say which file, train from the start
                raise BenchmarkError(f"{path}: not a training checkpoint this harness can read ({exc}); "
                                     "delete it to train the job from its first epoch") from None
            if state.get("job_hash") != job_hash:
                raise BenchmarkError(f"{path}: saved by job {state.get('job_hash')}, not {job_hash}")
        return cls(path, job_hash, run_id, state)

    @property
    def epoch(self) -> int:
        """The last epoch an earlier try completed (0: none)."""
        return int(self.state["epoch"]) if self.state else 0

    @property
    def previous_run_id(self) -> str | None:
        return self.state["run_id"] if self.state else None

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.partial")
        torch.save({**state, "job_hash": self.job_hash, "run_id": self.run_id}, partial)
        os.replace(partial, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def random_state() -> dict[str, Any]:
    """The global generators' states (NumPy's as a tensor: weights_only loads no arrays)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
