"""Jobs share a machine's cores through slots that every process of the machine sees."""

from __future__ import annotations

import os
import threading
import time

from benchmark.core.cores import core_slot, slot_count, usable_cores


def test_jobs_beyond_the_cores_wait_for_a_free_slot(tmp_path):
    cores = usable_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    assert slot_count(cores) == 1 and slot_count(1) == cores and slot_count(cores * 4) == 1
    spans = []

    def job():
        with core_slot(cores, tmp_path):  # each job wants every core: one at a time
            start = time.monotonic()
            time.sleep(0.3)
            spans.append((start, time.monotonic()))

    workers = [threading.Thread(target=job) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    spans.sort()
    assert len(spans) == 3 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # never two at once
