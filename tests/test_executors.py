"""The executor registry and the pool's pinning of workers to GPUs (checked through the
environment each worker sees, so it runs without a GPU)."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from benchmark.core.errors import BenchmarkError, UnknownNameError
from benchmark.run.executors import EXECUTORS, ExecutorOptions
from benchmark.run.executors.pool import device_slots, map_in_pool, pool_size


def visible_devices_after(meeting) -> tuple[int, str | None]:
    # Tasks meet in pairs, so each pair runs on two different workers however slowly the second
    # worker starts (a fixed sleep let one worker take all four tasks on a loaded machine).
    meeting.wait(timeout=120)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_four_executors_behind_one_name_each():
    assert EXECUTORS.names() == ["local", "pool", "ray", "slurm"]
    with pytest.raises(UnknownNameError, match="did you mean 'pool'"):
        EXECUTORS.get("poll")
    with pytest.raises(BenchmarkError, match="--workers 0: must be 1 or more"):
        ExecutorOptions(workers=0)


def test_pool_size_and_device_slots():
    assert pool_size(None, 4, 2) == 8 and pool_size(None, 1, 0) == 1 and pool_size(3, 4, 2) == 3
    assert device_slots(4, 2) == ["0", "1", "0", "1"]
    assert device_slots(3, 1) == [None, None, None]  # one GPU (or none): nothing to pin


@pytest.mark.slow
def test_each_pool_worker_sees_only_its_own_gpu():
    seen, submitted = {}, []
    with multiprocessing.get_context("spawn").Manager() as manager:
        meeting = manager.Barrier(2)
        map_in_pool(visible_devices_after, ((k, (meeting,)) for k in range(4)), workers=2, gpus=2,
                    on_submit=submitted.append, on_done=lambda key, result, error: seen.update({key: result or error}))
    assert submitted == [0, 1, 2, 3] and len(seen) == 4
    by_worker = {}
    for pid, visible in seen.values():
        by_worker.setdefault(pid, set()).add(visible)
    assert len(by_worker) == 2 and sorted(v for s in by_worker.values() for v in s) == ["0", "1"]


def test_a_failing_task_comes_back_as_an_error_not_an_exception():
    errors = {}
    map_in_pool(int, [("bad", ("not a number",))], workers=1, gpus=0, on_submit=lambda key: None,
                on_done=lambda key, result, error: errors.update({key: error}))
    assert isinstance(errors["bad"], ValueError)
