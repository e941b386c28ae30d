"""Sharing a machine's cores among the jobs that run on it, whoever started them.

Each job pins its torch thread count (`--threads`). Two invocations on one machine, each
sure it has the machine to itself, would run their jobs side by side with twice the threads
there are cores: on 2 cores a 1-epoch job that takes 6 s alone took 68 s so. A job therefore
trains only while it holds one of this machine's `cores // threads` slots: lock files in this
machine's temporary folder (never the cache, which a cluster may share over the network), one
set per user; a process that dies frees its slot.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

POLL_S = 0.2


def machine_slot_folder() -> Path:
    """Where this machine's slots live: $BENCHMARK_SLOTS, else local to the machine, one folder
    per user."""
    if os.environ.get("BENCHMARK_SLOTS"):
        return Path(os.environ["BENCHMARK_SLOTS"])
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"benchmark-core-slots-{uid}"


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def slot_count(threads: int) -> int:
    return max(1, usable_cores() // max(1, threads))


@contextmanager
def core_slot(threads: int, folder: Path) -> Iterator[int]:
    """Hold one of the machine's slots for a job of `threads` threads (waits for a free one)."""
    folder.mkdir(parents=True, exist_ok=True)
    locks = [FileLock(str(folder / f"slot-{i}.lock")) for i in range(slot_count(threads))]
    while True:
        for index, lock in enumerate(locks):
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                yield index
            finally:
                lock.release()
            return
        time.sleep(POLL_S)
