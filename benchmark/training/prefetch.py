"""Reading the next batches while the device computes the current one.

The cache data path reads a batch's rows from the decoded split (positioned reads, a copy into
pinned memory on CUDA) and then starts a non-blocking copy to the device. Done in the training
loop, the GPU idles during the read. `prefetched` moves the reads into one background thread that
stays `depth` batches ahead; the loop only starts the copies. The batches, their order and their
bytes are the same as without it, so the numbers do not change (it is not in the job hash).
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetched(items: Iterable[T], read: Callable[[T], R], depth: int) -> Iterator[tuple[T, R]]:
    """(item, read(item)) for each item, in order, with the reads done up to `depth` items ahead
    in a background thread (depth 0: in the caller's thread). An exception in `read` is raised
    in the caller at that item; closing the iterator early stops the thread."""
    if depth <= 0:
        for item in items:
            yield item, read(item)
        return
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(value) -> bool:
        while not stop.is_set():
            try:
                out.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def worker() -> None:
        try:
            for item in items:
                if not put((item, read(item))):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Failed(exc))
            return
        put(_DONE)

    thread = threading.Thread(target=worker, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            value = out.get()
            if value is _DONE:
                return
            if isinstance(value, _Failed):
                raise value.exc
            yield value
    finally:
        stop.set()
        thread.join()
