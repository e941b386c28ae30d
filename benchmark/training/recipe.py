"""How a job trains: the recipe, its defaults (the paper's) and what of it enters a job's hash."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from ..core.errors import BenchmarkError
from ..store.schema import dg_label_of

PRECISIONS = ("auto", "fp32", "bf16")
DATA_PATHS = ("cache", "per_sample")
DATA_ON_DEVICE = ("auto", "always", "never")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
ADAM_IMPLS = ("auto", "fused", "foreach")
OPTIMIZERS = ("method", "adamw")
SCHEDULES = ("method", "warmup_cosine")
SAMPLERS = ("uniform", "balanced", "domain_balanced")


@dataclass(frozen=True)
class Recipe:
    """How a job trains; defaults are the paper's (CAFE's train script)."""

    epochs: int = 60
    batch_size: int = 32
    input_size: int = 224
    # "uniform" (shuffle), "balanced" (class-balanced, with replacement) or "domain_balanced"
    # (every (domain, class) cell of a multi-source split equally likely, with replacement)
    sampler: str = "uniform"
    samples_per_epoch: int = 0  # 0 = the split's size
    seed: int = 3407
    precision: str = "auto"  # "auto" | "fp32" | "bf16": see benchmark.training.execution
    channels_last: bool = True
    compile: bool = False  # torch.compile the trainable backbone
    compile_mode: str = "default"  # torch.compile's mode: "default", "reduce-overhead" (CUDA graphs), ...
    # Adam's kernels: "auto" (one fused kernel on CUDA, torch's default elsewhere), "fused", "foreach".
    adam_impl: str = "auto"
    cudnn_benchmark: bool = False  # let cuDNN time its algorithms per shape (faster; last bits may vary run to run)
    # "cache": batches from the decoded-image cache, augmented batched on the device (the fast
    # path); "per_sample": decode and transform each image in DataLoader workers (the reference,
    # benchmark.training.per_sample), with `loader_workers` worker processes.
    data_path: str = "cache"
    loader_workers: int = 2
    progress: bool = True
    # How the cache path feeds the device; none of these changes a number (not in the job hash):
    prefetch: int = 2  # batches read ahead in a background thread (0: read in the loop)
    data_on_device: str = "auto"  # hold the decoded split on the GPU: "auto" (when it fits), "always", "never"
    sync_every: int = 50  # steps between the host's looks at the loss (non-finite check, progress bar)
    # Evaluate every target (and the source's validation split) after every eval_every-th epoch
    # and after the last, logged with step = epoch: the history the selection rules choose from.
    # It changes no trained number (0: only after the last epoch).
    eval_every: int = 1
    # A seeded, class-stratified share of the training split held out as the source's validation
    # split, for sources without one (0: none, the paper's protocol trains on the whole split).
    val_fraction: float = 0.0
    # Fine-tuning options for large pretrained backbones, off by default (benchmark.training.finetune):
    optimizer: str = "method"  # "method" (the method's own Adam or SGD) or "adamw" (decoupled decay)
    schedule: str = "method"  # "method" (its per-epoch decay) or "warmup_cosine" (per step)
    warmup_steps: int = 0  # warmup_cosine's linear warmup
    backbone_lr_scale: float = 1.0  # the backbone's rate relative to the rest (the heads)
    no_decay_norms: bool = False  # no weight decay on norms, biases and embeddings
    grad_clip_norm: float = 0.0  # clip gradients to this global L2 norm (0: no clipping)
    grad_checkpointing: bool = False  # timm's / open_clip's activation checkpointing (memory, not numbers)
    # Domain-generalization recipes (benchmark.training.recipes), off by default:
    sam_rho: float = 0.0  # SAM's neighbourhood radius (0: off; 0.05 the usual; ASAM about 10x that)
    sam_adaptive: bool = False  # ASAM: the perturbation scaled by |w|
    mixstyle: str = ""  # MixStyle after these stages past the stem, e.g. "1,2,3" (ResNet's layer1-3); "" off
    mixstyle_p: float = 0.5
    mixstyle_alpha: float = 0.1
    # SWAD (benchmark.training.recipes.swad): weights averaged over the loss valley found on the
    # source's validation split, evaluated every swad_eval_steps optimiser steps; upstream's
    # LossValley windows and ratio, its BN handling (no recomputation: swad_bn_batches = 0) and its
    # quirks (swad_quirks = False: every segment of the valley counted once).
    swad: bool = False
    swad_eval_steps: int = 100
    swad_n_converge: int = 3
    swad_n_tolerance: int = 6
    swad_tolerance_ratio: float = 0.3
    swad_bn_batches: int = 0
    swad_quirks: bool = True

    # Fields that change how fast a job runs, never what it computes (left out of the job hash).
    EXECUTION_ONLY: ClassVar[tuple[str, ...]] = ("progress", "prefetch", "data_on_device", "sync_every", "eval_every",
                                                 "grad_checkpointing")
    # Fields added after jobs were first hashed: they enter a job's identity only when set away
    # from their default, so the jobs hashed before them keep their hash.
    HASHED_WHEN_CHANGED: ClassVar[tuple[str, ...]] = ("compile_mode", "adam_impl", "cudnn_benchmark", "val_fraction",
                                                      "optimizer", "schedule", "warmup_steps", "backbone_lr_scale",
                                                      "no_decay_norms", "grad_clip_norm", "sam_rho", "sam_adaptive",
                                                      "mixstyle", "mixstyle_p", "mixstyle_alpha", "swad", "swad_eval_steps",
                                                      "swad_n_converge", "swad_n_tolerance", "swad_tolerance_ratio",
                                                      "swad_bn_batches", "swad_quirks")

    # Fields that act on one model's parameter groups, steps or modules (fine-tuning options, SAM,
    # MixStyle): jobs that set any of them train alone, never in a fused group.
    ONE_MODEL_ONLY: ClassVar[tuple[str, ...]] = ("optimizer", "schedule", "warmup_steps", "backbone_lr_scale",
                                                 "no_decay_norms", "grad_clip_norm", "grad_checkpointing",
                                                 "sam_rho", "sam_adaptive", "mixstyle", "swad")

    def trains_alone(self) -> bool:
        """Whether a field of ONE_MODEL_ONLY is set away from its default."""
        defaults = Recipe()
        return any(getattr(self, k) != getattr(defaults, k) for k in self.ONE_MODEL_ONLY)

    def dg_label(self) -> str:
        """The domain-generalization recipes this recipe wears, as tables name them ("sam+swad";
        "" for none): see `dg_label_of`."""
        return dg_label_of({k: getattr(self, k) for k in ("swad", "sam_rho", "sam_adaptive", "mixstyle")})

    def identity(self) -> dict:
        """The recipe's part of a job's identity (benchmark.jobs.plan)."""
        defaults = Recipe()
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in self.EXECUTION_ONLY
                and not (k in self.HASHED_WHEN_CHANGED and v == getattr(defaults, k))}

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise BenchmarkError(f"recipe.sampler = {self.sampler!r}; expected one of {', '.join(SAMPLERS)}")
        if self.data_path not in DATA_PATHS:
            raise BenchmarkError(f"recipe.data_path = {self.data_path!r}; expected one of {', '.join(DATA_PATHS)}")
        if self.precision not in PRECISIONS:
            raise BenchmarkError(f"recipe.precision = {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        if self.compile_mode not in COMPILE_MODES:
            raise BenchmarkError(f"recipe.compile_mode = {self.compile_mode!r}; expected one of {', '.join(COMPILE_MODES)}")
        if self.optimizer not in OPTIMIZERS:
            raise BenchmarkError(f"recipe.optimizer = {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise BenchmarkError(f"recipe.schedule = {self.schedule!r}; expected one of {', '.join(SCHEDULES)}")
        if self.warmup_steps < 0 or (self.warmup_steps and self.schedule != "warmup_cosine"):
            raise BenchmarkError(f"recipe.warmup_steps = {self.warmup_steps}; must be 0 or more, and is "
                                 "schedule = \"warmup_cosine\"'s")
        if self.backbone_lr_scale <= 0:
            raise BenchmarkError(f"recipe.backbone_lr_scale = {self.backbone_lr_scale}; must be positive")
        if self.sam_rho < 0 or (self.sam_adaptive and not self.sam_rho):
            raise BenchmarkError(f"recipe.sam_rho = {self.sam_rho}; must be 0 (off) or positive, and positive "
                                 "for recipe.sam_adaptive")
        if self.mixstyle:
            mixstyle_stages(self.mixstyle)
        if not 0 <= self.mixstyle_p <= 1 or self.mixstyle_alpha <= 0:
            raise BenchmarkError(f"recipe.mixstyle_p = {self.mixstyle_p}, mixstyle_alpha = {self.mixstyle_alpha}: "
                                 "p must be in [0, 1] and alpha positive")
        if self.swad_eval_steps < 1 or self.swad_n_converge < 1 or self.swad_n_tolerance < 1 or self.swad_bn_batches < 0:
            raise BenchmarkError(f"recipe.swad_eval_steps = {self.swad_eval_steps}, swad_n_converge = "
                                 f"{self.swad_n_converge}, swad_n_tolerance = {self.swad_n_tolerance}: each must be 1 "
                                 f"or more; swad_bn_batches = {self.swad_bn_batches}: 0 (keep) or more")
        if self.swad_tolerance_ratio < 0:
            raise BenchmarkError(f"recipe.swad_tolerance_ratio = {self.swad_tolerance_ratio}; must be 0 or more")
        if self.grad_clip_norm < 0:
            raise BenchmarkError(f"recipe.grad_clip_norm = {self.grad_clip_norm}; must be 0 (off) or positive")
        if self.adam_impl not in ADAM_IMPLS:
            raise BenchmarkError(f"recipe.adam_impl = {self.adam_impl!r}; expected one of {', '.join(ADAM_IMPLS)}")
        if self.data_on_device not in DATA_ON_DEVICE:
            raise BenchmarkError(f"recipe.data_on_device = {self.data_on_device!r}; expected one of "
                                 f"{', '.join(DATA_ON_DEVICE)}")
        for key in ("epochs", "batch_size", "input_size", "sync_every"):
            if getattr(self, key) <= 0:
                raise BenchmarkError(f"recipe.{key} = {getattr(self, key)}; must be positive")
        if self.eval_every < 0:
            raise BenchmarkError(f"recipe.eval_every = {self.eval_every}; must be 0 (after the last epoch only) or more")
        if not 0 <= self.val_fraction < 1:
            raise BenchmarkError(f"recipe.val_fraction = {self.val_fraction}; must be in [0, 1)")
        if self.prefetch < 0:
            raise BenchmarkError(f"recipe.prefetch = {self.prefetch}; must be 0 (no read-ahead) or more")
        if self.loader_workers < 0:
            raise BenchmarkError(f"recipe.loader_workers = {self.loader_workers}; must be 0 (load in the "
                                 "training process) or more")


def mixstyle_stages(text: str) -> list[int]:
    """`recipe.mixstyle` ("1,2,3") as stage numbers; an error names what it expected."""
    try:
        stages = [int(part) for part in text.split(",")]
    except ValueError:
        stages = []
    if not stages or sorted(set(stages)) != stages or stages[0] < 1:
        raise BenchmarkError(f"recipe.mixstyle = {text!r}: expected stage numbers in increasing order, e.g. "
                             "\"1,2,3\" (after ResNet's layer1, layer2, layer3) or \"1,2\"")
    return stages

