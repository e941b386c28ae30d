"""How a job trains: the recipe, its defaults (the paper's) and what of it enters a job's hash.

The Recipe is one frozen dataclass assembled from the loop's own fields (`LoopSettings`, below)
and the options of every registered training extension (benchmark.training.extensions: each
declares its `Options` in its own file), so `recipe.sam_rho` and `--set recipe.swad=true` read
as before, and adding an extension adds its fields without a change here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..core.errors import BenchmarkError
from .extensions import load_extensions, option_index, ordered

PRECISIONS = ("auto", "fp32", "bf16")
DATA_PATHS = ("cache", "per_sample")
DATA_ON_DEVICE = ("auto", "always", "never")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
ADAM_IMPLS = ("auto", "fused", "foreach")
SAMPLERS = ("uniform", "balanced", "domain_balanced")


@dataclass(frozen=True)
class LoopSettings:
    """The loop's own fields; defaults are the paper's (CAFE's train script)."""

    epochs: int = 60
    batch_size: int = 32
    input_size: int = 224
    # "uniform" (shuffle), "balanced" (class-balanced, with replacement) or "domain_balanced"
    # (every (domain, class) cell of a multi-source split equally likely, with replacement)
    sampler: str = "uniform"
    samples_per_epoch: int = 0  # 0 = the split's size
    seed: int = 3407
    precision: str = "auto"  # "auto" | "fp32" | "bf16": see benchmark.training.device_settings
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
    # How the cache path feeds the device; none of these changes a number (not in the job hash):
    prefetch: int = 2  # batches read ahead in a background thread (0: read in the loop)
    data_on_device: str = "auto"  # hold the decoded split on the GPU: "auto" (when it fits), "always", "never"
    # Evaluate every target (and the source's validation split) after every eval_every-th epoch
    # and after the last, logged with step = epoch: the history the selection rules choose from.
    # It changes no trained number (0: only after the last epoch).
    eval_every: int = 1
    # A seeded, class-stratified share of the training split held out as the source's validation
    # split, for sources without one (0: none, the paper's protocol trains on the whole split).
    val_fraction: float = 0.0

    # Fields that change how fast a job runs, never what it computes (left out of the job hash).
    EXECUTION_ONLY = ("prefetch", "data_on_device", "eval_every")
    # Fields added after jobs were first hashed: they enter a job's identity only when set away
    # from their default, so the jobs hashed before them keep their hash.
    HASHED_WHEN_CHANGED = ("compile_mode", "adam_impl", "cudnn_benchmark", "val_fraction")

    def check_loop_settings(self) -> None:
        for key, allowed in (("sampler", SAMPLERS), ("data_path", DATA_PATHS), ("precision", PRECISIONS),
                             ("compile_mode", COMPILE_MODES), ("adam_impl", ADAM_IMPLS),
                             ("data_on_device", DATA_ON_DEVICE)):
            if getattr(self, key) not in allowed:
                raise BenchmarkError(f"recipe.{key} = {getattr(self, key)!r}; expected one of {', '.join(allowed)}")
        for key in ("epochs", "batch_size", "input_size"):
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


def _extensions() -> list[type]:
    load_extensions()
    return ordered()


class RecipeMethods:
    """What a Recipe answers about itself, through its extensions (imported on first use: a
    recipe is built and checked without torch while it sets no extension's option)."""

    def extensions(self) -> list[type]:
        """The training extensions this recipe turns on, in the order the loop calls them."""
        return [cls for cls in _extensions() if cls.is_active(self)]

    def trains_alone(self) -> bool:
        """Whether an extension it turns on cannot fuse (its jobs then train alone)."""
        return any(not cls.fuses for cls in self.extensions())

    def dg_label(self) -> str:
        """The domain-generalization recipes this recipe wears, as tables name them ("sam+swad";
        "" for none): each extension's label, in the loop's order."""
        return label_of(dataclasses.asdict(self))

    def identity(self) -> dict:
        """The recipe's part of a job's identity (benchmark.jobs.plan)."""
        defaults = LoopSettings()
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(LoopSettings)
               if f.name not in LoopSettings.EXECUTION_ONLY
               and not (f.name in LoopSettings.HASHED_WHEN_CHANGED and getattr(self, f.name) == getattr(defaults, f.name))}
        for cls in _extensions():
            own.update(cls.identity(self))
        return own

    def __post_init__(self) -> None:
        self.check_loop_settings()
        changed = [entry.name for entry in option_index()
                   if any(getattr(self, name) != default for name, _, default in entry.fields)]
        if changed:  # defaults are valid: only an extension whose options are set checks them
            load_extensions()
            for cls in ordered():
                if cls.name in changed:
                    cls.validate(self)


def label_of(values: dict[str, Any]) -> str:
    """The row label of a recipe's fields, or of a run's logged `recipe.*` params as strings."""
    return "+".join(part for part in (cls.label(values) for cls in _extensions()) if part)


def _assemble() -> type:
    fields: list[tuple[str, Any, dataclasses.Field]] = []
    owner: dict[str, str] = {f.name: "the loop" for f in dataclasses.fields(LoopSettings)}
    for entry in option_index():
        for name, annotation, default in entry.fields:
            if name in owner:
                raise ValueError(f"recipe.{name}: declared by {owner[name]} and by extension {entry.name}")
            owner[name] = f"extension {entry.name}"
            fields.append((name, annotation, dataclasses.field(default=default)))
    recipe = dataclasses.make_dataclass("Recipe", fields, bases=(RecipeMethods, LoopSettings), frozen=True)
    recipe.__module__ = __name__
    recipe.__doc__ = ("How a job trains: the loop's own settings (LoopSettings) and every training "
                      "extension's options; defaults are the paper's.")
    recipe.OWNER = owner
    return recipe


Recipe = _assemble()
