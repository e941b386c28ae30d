"""`benchmark perf`: the real training loop's throughput, alone and with jobs packed on one device.

The staged timing in benchmark.perf.throughput synchronises the device between stages to split a step
into data / encoder / backbone / optimizer, which also stops the CPU from queueing work ahead
of the GPU. Here nothing is synchronised but what the trainer itself does: a method is fitted
for two epochs of `loop_steps` batches with `trainer.fit` (the first epoch warms up kernels,
cuDNN and compilation; the second is timed by the trainer's own `train/epoch_seconds`).

Variants of the recipe's numerics keys show what each part of the loop is worth:
`sync_every_step` looks at the loss on the host every step and reads each batch in the loop
from disk (as the loop did before read-ahead); `on_disk` keeps read-ahead but not the
device-resident split; `foreach_adam` runs Adam as torch's multi-tensor kernels instead of the
fused one; `default` is the recipe's default; `cudnn_benchmark` lets cuDNN time its algorithms;
the compiled ones add torch.compile of the backbone (with CUDA graphs: "reduce-overhead").

Fusing trains K jobs of one method as one stacked model in one process (`benchmark perf --fuse
1,2,4,8`); its images/s count all K jobs' images.

Packing runs N processes at once, each fitting the same method on the same device; a barrier
at the end of every process's warm-up epoch starts the timed epochs together, and the
aggregate is all timed images over the span from the first start to the last end.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from pathlib import Path

import torch

from ..core.environment import default_threads
from ..training.recipe import Recipe

LOOP_VARIANTS = {
    "sync_every_step": {"sync_every": 1, "prefetch": 0, "data_on_device": "never"},
    "on_disk": {"data_on_device": "never"},
    "foreach_adam": {"adam_impl": "foreach"},
    "default": {},
    "cudnn_benchmark": {"cudnn_benchmark": True},
}
# The domain-generalization recipes at their usual settings (`benchmark perf --recipes`): what
# each costs per epoch against "default". SWAD reads its validation loss on synth5/studio's val
# split (at the loop's scale) every recipe.swad_eval_steps steps, its default.
RECIPE_VARIANTS = {
    "sam": {"sam_rho": 0.05},
    "mixstyle": {"mixstyle": "1,2,3"},
    "swad": {"swad": True},
}
COMPILED_VARIANTS = {
    "compiled": {"compile": True},
    "compiled_cuda_graphs": {"compile": True, "compile_mode": "reduce-overhead"},
}


@dataclasses.dataclass
class LoopSpec:
    """What one timed fit runs: everything a spawned process needs to rebuild it."""

    method: str
    encoder: str
    backbone: str  # NAME:WEIGHTS
    size: int
    batch_size: int
    steps: int
    scale: float
    cache_dir: str
    device: str
    precision: str = "auto"
    channels_last: bool = True
    recipe_changes: dict = dataclasses.field(default_factory=dict)
    # The training split: synth5/studio at `scale` (from memory), or an image folder of files
    # (the per-sample path decodes those every step).
    dataset: str = "synth5/studio"
    root: str | None = None
    # K jobs (seeds 0..K-1 on the same split) trained as one fused model (benchmark.training.fused).
    fuse: int = 1

    def recipe(self, seed: int = 0) -> Recipe:
        base = Recipe(epochs=2, batch_size=self.batch_size, input_size=self.size,
                      samples_per_epoch=self.steps * self.batch_size, precision=self.precision,
                      channels_last=self.channels_last, seed=seed, progress=False)
        return dataclasses.replace(base, **self.recipe_changes)


class _TimedLog:
    """A run log that notes when each epoch ends, and waits at `barrier` after the first."""

    def __init__(self, barrier=None):
        self.barrier = barrier
        self.epoch_ends: list[float] = []
        self.epoch_seconds: list[float] = []

    def metrics(self, values, step=None) -> None:
        if "train/epoch_seconds" in values:
            self.epoch_seconds.append(values["train/epoch_seconds"])
            if len(self.epoch_ends) == 0 and self.barrier is not None:
                self.barrier.wait()
            self.epoch_ends.append(time.time())

    def figure(self, name, figure) -> None:
        pass


def timed_fit(spec: LoopSpec, encoder=None, barrier=None) -> dict:
    """Fit `spec.method` for a warm-up and a timed epoch; the timed epoch's images/s."""
    from ..training.method import Components
    from ..training.plugins import build_method

    from ..models.backbones import BackboneSpec
    from ..data import DATASETS, decode_split
    from ..models.encoders import EncoderSpec, build_encoder
    from ..training.features import FeatureCache

    device = torch.device(spec.device)
    if encoder is None:
        encoder = build_encoder(EncoderSpec(spec.encoder))
    options = {"scale": spec.scale} if spec.dataset.startswith("synth5/") else {}
    samples = DATASETS.get(spec.dataset).load(None if spec.root is None else Path(spec.root), "train", **options)
    data = decode_split(samples, spec.size, cache_dir=Path(spec.cache_dir))
    name, _, weights = spec.backbone.rpartition(":")
    components = Components(BackboneSpec(name, weights), encoder, FeatureCache(Path(spec.cache_dir) / "features"))
    log = _TimedLog(barrier)
    if spec.fuse > 1:  # the group's epoch time is logged to every job's log; the first one's is read
        from ..training.fused import fit_fused

        methods = [build_method(spec.method, components=components) for _ in range(spec.fuse)]
        errors = fit_fused(methods, [data] * spec.fuse, recipes=[spec.recipe(seed) for seed in range(spec.fuse)],
                           device=device, logs=[log] + [_TimedLog() for _ in range(spec.fuse - 1)],
                           epoch_ends=[None] * spec.fuse)
        if any(errors):
            raise next(e for e in errors if e is not None)
    else:
        recipe = spec.recipe()
        validation = None
        if recipe.swad:  # SWAD reads a validation split's loss: synth5/studio's own
            validation = decode_split(DATASETS.get("synth5/studio").load(None, "val", scale=spec.scale), spec.size,
                                      cache_dir=Path(spec.cache_dir))
        build_method(spec.method, components=components).fit(data, recipe=recipe, device=device, log=log,
                                                             **({"validation": validation} if validation else {}))
    images = spec.steps * spec.batch_size * spec.fuse
    return {"images_per_s": images / log.epoch_seconds[-1], "epoch_s": log.epoch_seconds[-1],
            "warmup_epoch_s": log.epoch_seconds[0], "images": images,
            "timed_start": log.epoch_ends[0], "timed_end": log.epoch_ends[-1]}


def _packed_worker(spec: LoopSpec, barrier, results, threads: int) -> None:
    torch.set_num_threads(threads)  # the CPU's cores shared among the packed processes
    try:
        results.put(timed_fit(spec, barrier=barrier))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        barrier.abort()
        results.put({"error": f"{type(exc).__name__}: {exc}"})


def packed_throughput(spec: LoopSpec, processes: int, timeout_s: float = 600) -> dict:
    """`processes` fits of `spec` at once on its device; the aggregate training images/s."""
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    threads = default_threads(processes)
    workers = [ctx.Process(target=_packed_worker, args=(spec, barrier, results, threads)) for _ in range(processes)]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=timeout_s) for _ in workers]
    for w in workers:
        w.join()
    errors = [o["error"] for o in outcomes if "error" in o]
    if errors:
        return {"processes": processes, "recipe_changes": spec.recipe_changes, "error": errors[0]}
    span = max(o["timed_end"] for o in outcomes) - min(o["timed_start"] for o in outcomes)
    images = sum(o["images"] for o in outcomes)
    return {"processes": processes, "fuse": spec.fuse, "recipe_changes": spec.recipe_changes,
            "images_per_s": images / span,
            "span_s": span,
            "per_process_images_per_s": [o["images_per_s"] for o in outcomes]}
