"""Resume points: a job's training state after an epoch, so a job stopped (killed, preempted, its node lost)
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

When the store is a tracking server, the folder may be its artifact location (s3:,
mlflow-artifacts:, ...: a RemoteFolder), where nothing can be renamed: each write is then a new
file `<job hash>/<n>.pt`, uploaded from a local copy, and the one before is deleted only once it
is up, so a stop mid-upload leaves the previous state to resume from. A bad file there is kept
locally, set aside, and deleted from the store.
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

from ..store.remote_folder import RemoteFolder


# The state's layout: a file written with another is set aside, not read (its keys may differ).
# 2: one layout for one job and a fused group (a list of jobs), extensions' states by name.
LAYOUT = 2


@dataclass
class ResumePoint:
    path: Path  # the file (for a remote folder: this try's local copy of its newest write)
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
    # A tracking server's artifact folder (benchmark.store.remote_folder) the file lives in;
    # `path` is then under a local staging folder and every write is uploaded.
    remote: RemoteFolder | None = None
    _uploaded: list[str] = field(default_factory=list, repr=False)  # the remote's files of this job, oldest first
    _last: float = field(default_factory=time.monotonic, repr=False)

    @classmethod
    def open(cls, folder: str | Path, job_hash: str, run_id: str, every_s: float = 0.0,
             mid_epoch_s: float | None = None, remote: RemoteFolder | None = None) -> "ResumePoint":
        """The job's checkpoint in `folder` (with `remote`: in that artifact folder, `folder`
        staging its local copies), with what an earlier try saved there (if anything).
        A file that cannot be resumed from (unreadable or truncated, another job's, another
        layout's) is renamed aside, kept for a look, and named in `warning`: the job trains from
        the last good state before it, else from its first epoch, instead of failing or resuming
        the wrong state."""
        when = {"every_s": every_s, "mid_epoch_s": mid_epoch_s, "remote": remote}
        if remote is None:
            path = Path(folder) / f"{job_hash}.pt"
            found: list[tuple[Any, str]] = [(path, str(path))] if path.is_file() else []
            uploaded = []
        else:  # newest first: <job hash>/<write number>.pt
            uploaded = [n for n in remote.names(job_hash) if n.endswith(".pt")]
            path = Path(folder) / job_hash / (Path(uploaded[-1]).name if uploaded else f"{0:08d}.pt")
            found = [(name, f"{remote.uri}/{name}") for name in reversed(uploaded)]
        notes = []
        for local, where in found:
            if remote is not None:  # downloaded one by one: the newest readable one is all it takes
                local = remote.get(local, Path(folder))
            state, why = _read(local, job_hash)
            if not why:
                warning = "; ".join(notes) + (f"; resuming from {where}" if notes else "")
                return cls(local, job_hash, run_id, state, warning, _uploaded=list(uploaded), **when)
            aside = local.with_name(f"{local.name}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
            os.replace(local, aside)
            if remote is not None:  # kept here; the next write must not be hidden behind it
                remote.delete(uploaded.pop())  # the newest left: they are read newest first
            notes.append(f"{where}: {why}; set aside as {aside if remote is not None else aside.name}")
        warning = "; ".join(notes) + (", training from epoch 1" if notes else "")
        return cls(path, job_hash, run_id, None, warning, _uploaded=list(uploaded), **when)

    @property
    def where(self) -> str:
        """The file, as a user would look for it (the remote's URI when there is one)."""
        return f"{self.remote.uri}/{self._uploaded[-1]}" if self.remote is not None and self._uploaded else str(self.path)

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
        if self.remote is not None:  # a new file each time: the older is deleted once this one is up
            number = int(Path(self._uploaded[-1]).stem) + 1 if self._uploaded else 1
            self.path = self.path.with_name(f"{number:08d}.pt")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.partial")
        torch.save({**state, "job_hash": self.job_hash, "run_id": self.run_id, "layout": LAYOUT}, partial)
        os.replace(partial, self.path)
        if self.remote is not None:
            self._uploaded.append(self.remote.put(self.path, self.job_hash))
            for older in self._uploaded[:-1]:
                self.remote.delete(older)
                self.path.with_name(Path(older).name).unlink(missing_ok=True)
            del self._uploaded[:-1]

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        if self.remote is not None:
            for name in self._uploaded:
                self.remote.delete(name)
            self._uploaded.clear()
            # This job's local copies, with any an earlier try on this host left when it was
            # stopped (set-aside files stay).
            for left in [*self.path.parent.glob("*.pt"), *self.path.parent.glob("*.partial")]:
                left.unlink(missing_ok=True)




def _read(path: Path, job_hash: str) -> tuple[dict[str, Any] | None, str]:
    """The state in `path` and "" , or None and why it cannot be resumed from."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt or not torch's: never fatal to the grid
        return None, f"unreadable ({str(exc).splitlines()[0][:200]})"
    if not isinstance(state, dict):
        return None, f"not a training checkpoint (a {type(state).__name__})"
    if state.get("job_hash") != job_hash:
        return None, f"saved by job {state.get('job_hash')}, not {job_hash}"
    if state.get("layout") != LAYOUT:
        return None, f"state layout {state.get('layout', 'unversioned')}, this version reads {LAYOUT}"
    return state, ""


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
