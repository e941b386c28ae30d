"""Who owns a RUNNING run, and whether that owner still lives.

A run records its owner's host, pid and the pid's start time (so a reused pid is not mistaken
for the owner). On the owner's host that is enough to tell; elsewhere the run's `heartbeat` tag,
refreshed every HEARTBEAT_EVERY_S while the job runs, says whether its owner was alive recently.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable

from . import schema

# A RUNNING run on another host whose heartbeat is older than HEARTBEAT_STALE_S is taken as
# dead (a lost node, a killed worker). Ten missed beats, so a briefly locked store or a skewed
# clock does not count.
HEARTBEAT_EVERY_S = 60.0
HEARTBEAT_STALE_S = 600.0


def process_tags() -> dict[str, str]:
    import psutil

    me = psutil.Process()
    return {schema.HOST: socket.gethostname(), schema.PID: str(me.pid), schema.PID_STARTED: f"{me.create_time():.3f}"}


def process_alive(tags: dict[str, str]) -> bool | None:
    """Whether the process that owns a RUNNING run still lives: True/False on this host, None elsewhere."""
    import psutil

    if tags.get(schema.HOST) != socket.gethostname():
        return None
    try:
        proc = psutil.Process(int(tags.get(schema.PID, "-1")))
        if proc.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped (its parent died too, and no init reaps)
            return False
        return abs(proc.create_time() - float(tags.get(schema.PID_STARTED, "0"))) < 1.0
    except (psutil.NoSuchProcess, ValueError):
        return False


def run_alive(tags: dict[str, str], now: float | None = None) -> bool | None:
    """Whether a RUNNING run's owner lives: by its process on this host, by its heartbeat
    elsewhere; None when neither can tell (another host, a run from before heartbeats)."""
    local = process_alive(tags)
    if local is not None or schema.HEARTBEAT not in tags:
        return local
    try:
        beat = float(tags[schema.HEARTBEAT])
    except ValueError:
        return None
    return (time.time() if now is None else now) - beat < HEARTBEAT_STALE_S


class Heartbeat:
    """Calls `beat(tags)` with a fresh `heartbeat` tag from a daemon thread while the `with` block runs."""

    def __init__(self, beat: Callable[[dict[str, str]], None], every_s: float = HEARTBEAT_EVERY_S):
        self.beat, self.every_s = beat, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def _loop(self) -> None:
        while True:
            try:
                self.beat({schema.HEARTBEAT: f"{time.time():.0f}"})
            except Exception:  # noqa: BLE001 - a missed beat must never fail the job
                pass
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
