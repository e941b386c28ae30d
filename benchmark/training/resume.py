"""A job's training state after an epoch, so a job stopped (killed, preempted, its node lost)
trains on from the next one instead of from its first, whichever executor runs its next try.

After an epoch (never the last, and only when `every_s` seconds have passed since the last
write: the runner's `--resume-every`, 60 by default) the loop saves what the next epoch
depends on: the trainable modules and the method's own random draws, the optimiser and its schedule, every generator the
loop draws from (order, augmentation, torch's, NumPy's and Python's global ones), the training
labels (SCN relabels them) and the step count. A later try of the same job loads it and goes on:
on the same machine type and thread count its numbers equal an uninterrupted run's, bit for bit.

Where one epoch is long (AffectNet's 280k images), `mid_epoch_s` (the runner's
`--resume-mid-epoch`) also writes the state between two batches once that many seconds have
passed since the last write. It holds, besides the above, where the epoch stands (`in_epoch`):
its row order, how many batches are done and the epoch's loss sums so far. The order generator
is not drawn from inside an epoch and the augmentation generator is drawn batch by batch as the
loop takes each batch, so a later try skips the batches done and goes on with the same draws.

The file is `<folder>/<job hash>.pt`, written whole and then renamed over the old one (a stop
mid-write leaves the previous epoch's), read with `torch.load(weights_only=True)`, and deleted
when the job ends (FINISHED or FAILED): only a stopped job leaves one. A file that cannot be
resumed from (truncated, corrupt, another job's, another state layout's) is renamed aside with a
warning and the job trains from its first epoch.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


# The state's layout: a file written with another is set aside, not read (its keys may differ).
LAYOUT = 1


@dataclass
class EpochCheckpoint:
    path: Path
    job_hash: str
    run_id: str  # the run this try writes (the next try copies its history from it)
    state: dict[str, Any] | None = None  # what an earlier try saved: resume after state["epoch"]
    warning: str = ""  # why a file found was set aside instead of resumed from
    # An epoch's state is written only when this many seconds have passed since the last write
    # (or the start): where epochs take seconds, writing each costs more than a stop could lose.
    every_s: float = 0.0
    # Inside an epoch, between two batches, when this many seconds have passed since the last
    # write (None: at epoch ends only).
    mid_epoch_s: float | None = None
    _last: float = field(default_factory=time.monotonic, repr=False)

    @classmethod
    def open(cls, folder: str | Path, job_hash: str, run_id: str, every_s: float = 0.0,
             mid_epoch_s: float | None = None) -> "EpochCheckpoint":
        """The job's checkpoint in `folder`, with what an earlier try saved there (if anything).
        A file that cannot be resumed from (unreadable or truncated, another job's, another
        layout's) is renamed aside, kept for a look, and named in `warning`: the job trains from
        its first epoch instead of failing or resuming the wrong state."""
        path = Path(folder) / f"{job_hash}.pt"
        when = {"every_s": every_s, "mid_epoch_s": mid_epoch_s}
        if not path.is_file():
            return cls(path, job_hash, run_id, **when)
        why = ""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated, corrupt or not torch's: never fatal to the grid
            state, why = None, f"unreadable ({str(exc).splitlines()[0][:200]})"
        if state is not None and not isinstance(state, dict):
            why = f"not a training checkpoint (a {type(state).__name__})"
        elif state is not None and state.get("job_hash") != job_hash:
            why = f"saved by job {state.get('job_hash')}, not {job_hash}"
        elif state is not None and state.get("layout") != LAYOUT:
            why = f"state layout {state.get('layout', 'unversioned')}, this version reads {LAYOUT}"
        if not why:
            return cls(path, job_hash, run_id, state, **when)
        aside = path.with_name(f"{path.name}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        os.replace(path, aside)
        return cls(path, job_hash, run_id, None, f"{path}: {why}; set aside as {aside.name}, training from epoch 1",
                   **when)

    @property
    def epoch(self) -> int:
        """The last epoch an earlier try completed (0: none)."""
        return int(self.state["epoch"]) if self.state else 0

    @property
    def in_epoch(self) -> dict[str, Any] | None:
        """Where the epoch after `epoch` stood, when the state was written inside it."""
        return self.state.get("in_epoch") if self.state else None

    def saved_through(self) -> str:
        """What the earlier try completed, in words: "epoch 3", or "epoch 3 + 2 of 8 batches of epoch 4"."""
        inside = self.in_epoch
        if inside is None:
            return f"epoch {self.epoch}"
        return f"epoch {self.epoch} + {int(inside['batches'])} of {int(inside['of'])} batches of epoch {self.epoch + 1}"

    def resumes_at(self) -> str:
        """Where the next try goes on, in words: "epoch 4", or "epoch 4 at batch 3 of 8"."""
        inside = self.in_epoch
        if inside is None:
            return f"epoch {self.epoch + 1}"
        return f"epoch {self.epoch + 1} at batch {int(inside['batches']) + 1} of {int(inside['of'])}"

    @property
    def previous_run_id(self) -> str | None:
        return self.state["run_id"] if self.state else None

    def due(self) -> bool:
        """Whether the epoch just ended is to be written (`every_s` has passed since the last)."""
        return time.monotonic() - self._last >= self.every_s

    def due_in_epoch(self) -> bool:
        """Whether to write now, between two batches (`mid_epoch_s` has passed since the last)."""
        return self.mid_epoch_s is not None and time.monotonic() - self._last >= self.mid_epoch_s

    def save(self, state: dict[str, Any]) -> None:
        self._last = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.partial")
        torch.save({**state, "job_hash": self.job_hash, "run_id": self.run_id, "layout": LAYOUT}, partial)
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
