"""The method contract: what a method is given, what it must provide, and how it is registered.

A method is a registered class with a hyperparameter dataclass whose defaults are the paper's:

    fit(train_data, *, recipe, device, log, epoch_end=None)  train on a decoded split
    predict(data) -> (N, 7) probabilities                    evaluate (no augmentation)
    report(data, log)                                        optional figures on a labelled split
    state_dict() / load_state_dict(state)

It gets everything passed in: the data, the recipe, the device, a `RunLog`, an `epoch_end`
callback to call after each epoch (the runner evaluates the model there), and its
`Components` (the frozen encoder, the backbone spec, the feature cache). It never opens the
result store or reads flags. Methods trained by the shared loop subclass
`benchmark.training.trained_method.TrainedMethod` and write a `training_step(batch)`.

Variants are the same class registered under another name with other defaults:

    @register_method("cafe", "...")
    @register_method("cafe_nosigmoid", "...", use_sigmoid=False)
    class Cafe(TrainedMethod): ...

Methods are found through the entry-point group `benchmark.methods` (benchmark.training.plugins
loads them): the built-in ones (the `methods` package) and any installed package's alike. Each
entry point names a module (or callable) that registers its methods when loaded.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol

import numpy as np
import torch

from ..models.backbones import BackboneSpec
from ..data.cache import DecodedSplit
from ..models.encoders import FrozenEncoder
from ..core.errors import BenchmarkError
from .numerics import Numerics
from .features import FeatureCache
from ..core.registry import Registry
from .recipe import Recipe



EpochEnd = Callable[[int], Any]  # called with the 1-based epoch just finished (returns the metrics logged)


class RunLog(Protocol):
    """What a method may report while it runs; the runner decides where it goes."""

    def metrics(self, values: dict[str, float], step: int | None = None) -> None: ...

    def figure(self, name: str, figure: Any) -> None: ...


@dataclass
class MemoryLog:
    """A RunLog that keeps everything in memory (tests, quick experiments)."""

    history: list[tuple[int | None, dict[str, float]]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        self.history.append((step, dict(values)))

    def figure(self, name: str, figure: Any) -> None:
        self.figures[name] = figure

    def series(self, key: str) -> list[float]:
        return [values[key] for _, values in self.history if key in values]


@dataclass
class Components:
    """What the runner builds once and hands to a method."""

    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    encoder: FrozenEncoder | None = None
    features: FeatureCache = field(default_factory=FeatureCache)


def check_range(ok: bool, key: str, value: Any, rule: str) -> None:
    """Raise a BenchmarkError naming the hyperparameter unless `ok`."""
    if not ok:
        raise BenchmarkError(f"hyperparameter {key} = {value!r}: must be {rule}")


@dataclass
class Batch:
    """One training batch, as the shared loop hands it to `TrainedMethod.training_step`."""

    images: torch.Tensor  # augmented, normalised, in the numerics's memory layout, on the device
    labels: torch.Tensor  # the samples' current training labels (after any relabelling), on the device
    index: np.ndarray  # the samples' rows in the training split
    flips: torch.Tensor | None = None  # which samples the augmentation mirrored (None: not reported)
    # A multi-source job's split: each sample's domain, an index into the training split's
    # `domain_names` (None when the job trains on one dataset).
    domains: torch.Tensor | None = None
    # Tensors computed outside the trainable model for this step: the method's own random draws
    # (`TrainedMethod.step_extras`) and, when jobs are fused, the frozen encoder's features.
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    # What `training_step` reports of its forward pass for training extensions to read: "logits",
    # the class logits its cross-entropy is taken on (methods that declare `training_logits`).
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def record_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits`, kept as this step's class logits (spectral decoupling, RandConv's consistency
        loss read them); a method calls it on what its cross-entropy is taken on."""
        self.outputs["logits"] = logits
        return logits


@dataclass
class Relabel:
    """Training labels a method changes after a step (SCN): rows of the split and their new labels.
    The loop owns the labels (a copy of the split's); the change holds for the rest of training."""

    rows: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class OptimizerSettings:
    """What the shared loop's optimiser takes from a method: Adam (or SGD with momentum) with L2
    weight decay, and its schedule, stepped once per epoch: "decay" multiplies the learning rate
    by `lr_gamma` after every `lr_step` epochs (ExponentialLR for 1, else StepLR); "cosine" is
    CosineAnnealingLR over the recipe's epochs (LP-FT's); "warmup_cosine_epochs" is Dassl's (CoOp,
    CLIP-Adapter): the first epoch at the constant `warmup_lr`, then epoch e at
    lr (1 + cos(pi (e - 1) / epochs)) / 2, which never reaches zero; "warmup_cosine_steps" is
    stepped after every optimiser step instead (WiSE-FT's `cosine_lr`: linear warmup over
    `warmup_steps`, then cosine to 0). `optimizer = "adamw"` decays every parameter decoupled;
    `grad_clip_norm` > 0 clips the gradients' global norm before each step. A recipe's
    fine-tuning options, where set, take precedence (benchmark.training.finetune)."""

    lr: float
    weight_decay: float
    lr_gamma: float
    optimizer: str = "adam"  # "adam" or "sgd"
    momentum: float = 0.0  # SGD's
    lr_step: int = 1
    schedule: str = "decay"  # "decay", "cosine", "warmup_cosine_epochs" or "warmup_cosine_steps"
    warmup_lr: float = 1e-5  # warmup_cosine_epochs' first epoch
    warmup_steps: int = 0  # warmup_cosine_steps' warmup
    grad_clip_norm: float = 0.0


@dataclass
class BaseHparams:
    """The optimisation recipe shared by the paper's methods (Adam + ExponentialLR per epoch)."""

    lr: float = 2e-4
    weight_decay: float = 1e-4
    lr_gamma: float = 0.9

    def __post_init__(self) -> None:
        check_range(self.lr > 0, "lr", self.lr, "> 0")
        check_range(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        check_range(0 < self.lr_gamma <= 1, "lr_gamma", self.lr_gamma, "in (0, 1]")

    def optimizer(self) -> OptimizerSettings:
        return OptimizerSettings(self.lr, self.weight_decay, self.lr_gamma)


class Method(abc.ABC):
    """The interface the runner uses."""

    Hparams: ClassVar[type] = BaseHparams
    needs_encoder: ClassVar[bool] = False
    # Bumped when a fix changes what the method computes with the same hyperparameters; a job's
    # identity holds it from 2 on (so jobs of the unchanged methods keep their hash).
    version: ClassVar[int] = 1
    # Whether several jobs of the method may train as one fused model (`benchmark run --fuse`;
    # see TrainedMethod). Off unless a method declares it, so plugins keep one job per loop.
    fuses: ClassVar[bool] = False
    # The frozen encoder the method needs when it is not the protocol's (OFER: its MAE), as an
    # encoder id; a protocol's [encoders.<method>] table may still name another id or a path.
    default_encoder: ClassVar[str | None] = None
    # Whether the shared training loop trains it (TrainedMethod): only then can it wear the
    # recipe's loop options (fine-tuning options, SWAD, SAM, MixStyle); others are refused them.
    trained_by_loop: ClassVar[bool] = False
    # Whether it reads CLIP's text tower (zero-shot heads, prompts): with an encoder that has none
    # its jobs are not applicable, and a grid skips them before any work (jobs.plan.not_applicable).
    needs_text_tower: ClassVar[bool] = False
    # Under precision "auto", the frozen CLIP runs in fp16 on CUDA (the paper's code); a method
    # whose authors cast CLIP to fp32 (CLIP-Adapter's build_model) sets this to keep to theirs.
    clip_fp32: ClassVar[bool] = False

    def __init__(self, hparams: Any, components: Components, name: str = ""):
        self.hparams = hparams
        self.components = components
        self.name = name or type(self).__name__.lower()
        self.place(torch.device("cpu"))
        if self.needs_encoder and components.encoder is None:
            raise BenchmarkError(f"method {self.name} needs a frozen encoder (protocol key `encoder`)")

    def place(self, device: torch.device, numerics: Numerics | None = None) -> None:
        """Where and how this method computes (default: the "auto" precision on `device`)."""
        self.device = device
        self.numerics = numerics or Numerics.resolve(device)

    def encoder_dtype(self) -> torch.dtype:
        """The frozen encoder's dtype: the numerics's (CLIP in fp16 on CUDA under "auto"), but
        fp32 under "auto" for a method whose authors' code casts CLIP to fp32 (`clip_fp32`)."""
        if self.clip_fp32 and self.numerics.precision == "auto":
            return torch.float32
        return self.numerics.encoder_dtype_for(self.components.encoder.is_clip)

    def placed_encoder(self) -> FrozenEncoder:
        """The frozen encoder on this method's device, in `encoder_dtype()`."""
        return self.components.encoder.to_device(self.numerics.device, self.encoder_dtype())

    @abc.abstractmethod
    def fit(self, train_data: DecodedSplit, *, recipe: Recipe, device: torch.device, log: RunLog,
            epoch_end: EpochEnd | None = None) -> None:
        """Train. After each epoch of training (a method without epochs: once, as epoch 1) call
        `epoch_end(epoch)` when given; `predict` must work there. A method may also take
        `resume: ResumePoint | None` (benchmark.training.resume) to save its state after each
        epoch and go on from a stopped try's; the runner passes it only to a `fit` that names it."""

    @abc.abstractmethod
    def predict(self, data: DecodedSplit) -> np.ndarray:
        """(N, 7) class probabilities, rows in the order of `data`."""

    def report(self, data: DecodedSplit, log: RunLog) -> None:
        """Method-specific figures on a labelled split (the runner passes the source test split)."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class MethodEntry:
    name: str
    cls: type[Method]
    description: str
    defaults: dict[str, Any]

    def hparams(self, overrides: dict[str, Any] | None = None) -> Any:
        """The resolved hyperparameters: dataclass defaults < variant defaults < overrides; every
        key, type and range checked (each Hparams class checks its ranges in __post_init__)."""
        merged = {**self.defaults, **(overrides or {})}
        defaults = self.cls.Hparams()
        known = {f.name for f in dataclasses.fields(defaults)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise BenchmarkError(f"method {self.name}: unknown hyperparameter(s) {', '.join(unknown)} "
                                 f"(known: {', '.join(sorted(known))})")
        for key, value in merged.items():
            merged[key] = _checked_type(self.name, key, value, getattr(defaults, key))
        try:
            return dataclasses.replace(defaults, **merged)
        except BenchmarkError as exc:
            raise BenchmarkError(f"method {self.name}: {exc}") from None


def _checked_type(method: str, key: str, value: Any, default: Any) -> Any:
    """`value` as the type of the hyperparameter's default (an int where a float is expected, a
    list where a tuple is), or a BenchmarkError naming the method and key."""
    expected = type(default)
    if default is None:  # no default to take a type from
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, tuple):
        kinds = {type(d) for d in default}
        ok = isinstance(value, (list, tuple)) and (not kinds or all(type(v) in kinds for v in value))
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, expected) and not isinstance(value, bool)
    if not ok:
        raise BenchmarkError(f"method {method}: hyperparameter {key} = {value!r}: expected {expected.__name__}, "
                             f"got {type(value).__name__}")
    return value


METHODS: Registry[MethodEntry] = Registry("method")


def register_method(name: str, description: str, **defaults: Any) -> Callable[[type], type]:
    def decorator(cls: type) -> type:
        METHODS.add(name, MethodEntry(name, cls, description, defaults))
        return cls

    return decorator
