"""The pool executor: worker processes on this machine, each pinned to one GPU when there are
several.

One ResNet-18 at batch 32 leaves a large GPU mostly idle, so several jobs share each GPU
(`--jobs-per-gpu N`: N workers per GPU; each process has its own CUDA context, models and
memory). Jobs start in the grid's order. Workers are spawned, not forked: a forked child of a
process that touched CUDA cannot use CUDA.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable

from ..runner import run_group
from . import EXECUTORS, for_workers, lost, work_units


def gpu_count() -> int:
    """GPUs this process may use (without creating a CUDA context here)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pool_size(workers: int | None, jobs_per_gpu: int, gpus: int) -> int:
    return workers or jobs_per_gpu * max(1, gpus)


def device_slots(workers: int, gpus: int) -> list[str | None]:
    """The GPU each worker is pinned to (round robin); None everywhere with fewer than two GPUs
    (one GPU needs no pinning, and CPU jobs none)."""
    return [str(k % gpus) for k in range(workers)] if gpus > 1 else [None] * workers


def _pin(slots) -> None:
    """Worker initializer: take a GPU from the shared queue before CUDA is first used."""
    gpu = slots.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def map_in_pool(fn: Callable[..., Any], items: Iterable[tuple[Any, tuple]], workers: int, gpus: int,
                on_submit: Callable[[Any], None], on_done: Callable[[Any, Any | None, BaseException | None], None]) -> None:
    """Run `fn(*args)` for each (key, args) on `workers` spawned processes pinned by device_slots;
    `on_done(key, result, error)` as each finishes."""
    context = multiprocessing.get_context("spawn")
    slots = context.Manager().Queue()
    for slot in device_slots(workers, gpus):
        slots.put(slot)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_pin, initargs=(slots,)) as pool:
        pending = {}
        for key, args in items:
            on_submit(key)
            pending[pool.submit(fn, *args)] = key
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                key = pending.pop(future)
                try:
                    on_done(key, future.result(), None)
                except Exception as exc:  # noqa: BLE001 - the worker process died: the job failed
                    on_done(key, None, exc)


@EXECUTORS.register("pool")
def run_pool(jobs, ctx, options, announce, report):
    gpus = gpu_count() if ctx.device in (None, "cuda") else 0
    shipped = for_workers(ctx)
    results = []

    def submit(group) -> None:
        for job in group:
            announce(job)

    def done(group, group_results, error) -> None:
        for k, job in enumerate(group):
            results.append(group_results[k] if error is None else lost(job, error))
            report(results[-1])

    map_in_pool(run_group, ((group, (group, shipped)) for group in work_units(jobs, options)),
                pool_size(options.workers, options.jobs_per_gpu, gpus), gpus, submit, done)
    return results
