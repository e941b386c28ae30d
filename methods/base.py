"""The Method interface, its registry, and the base class of every trained method.

A method is a registered class with a hyperparameter dataclass whose defaults are the paper's:

    fit(train_data, *, recipe, device, log)      train on a decoded split
    predict(data) -> (N, 7) probabilities         evaluate (no augmentation)
    state_dict() / load_state_dict(state)

It gets everything passed in (data, recipe, device, a `log` object, and its `Components`: the
frozen encoder, the backbone spec, the feature cache); it never opens MLflow or reads flags.
Variants are the same class registered under another name with other defaults:

    @register_method("cafe", "...")
    @register_method("cafe_nosigmoid", "...", use_sigmoid=False)
    class Cafe(TrainedMethod): ...

Outside packages add methods through the entry-point group `benchmark.methods` (each entry point
is a module or callable that registers its methods when loaded).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from benchmark.augment import PAPER, AugmentSpec
from benchmark.backbones import Backbone, BackboneSpec, build_backbone
from benchmark.data.cache import DecodedSplit
from benchmark.encoders import FrozenEncoder
from benchmark.errors import BenchmarkError
from benchmark.execution import Execution
from benchmark.features import FeatureCache
from benchmark.registry import Registry
from benchmark.trainer import Recipe, fit as train_loop, predict_batches

ENTRY_POINT_GROUP = "benchmark.methods"
# SCN's and RUL's released code: with p = 0.5 apply one of {horizontal flip, Gaussian noise}.
ONE_OF_FLIP_NOISE = AugmentSpec(noise_p=0.0, flip_p=0.0, one_of_p=0.5)


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


@dataclass(frozen=True)
class MethodEntry:
    name: str
    cls: type["Method"]
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


def check_range(ok: bool, key: str, value: Any, rule: str) -> None:
    """Raise a BenchmarkError naming the hyperparameter unless `ok`."""
    if not ok:
        raise BenchmarkError(f"hyperparameter {key} = {value!r}: must be {rule}")


METHODS: Registry[MethodEntry] = Registry("method")
_plugins_loaded = False


def register_method(name: str, description: str, **defaults: Any) -> Callable[[type], type]:
    def decorator(cls: type) -> type:
        METHODS.add(name, MethodEntry(name, cls, description, defaults))
        return cls

    return decorator


def load_plugins() -> None:
    """Import the methods of installed packages that declare the `benchmark.methods` entry point."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def build_method(name: str, overrides: dict[str, Any] | None = None,
                 components: Components | None = None) -> "Method":
    load_plugins()
    entry = METHODS.get(name)
    return entry.cls(entry.hparams(overrides), components or Components(), name=name)


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


CLIP_FEATURES = ("online", "cached")


def check_clip_features(method: str, value: str) -> None:
    if value not in CLIP_FEATURES:
        raise BenchmarkError(f"{method}: clip_features = {value!r}; expected one of {', '.join(CLIP_FEATURES)}")


@dataclass
class EncoderHparams(BaseHparams):
    """BaseHparams plus the choice of how the frozen encoder's training features are computed."""

    clip_features: str = "online"  # "online" (the paper) or "cached" (faster, no augmentation on F)


class Method:
    """The interface the runner uses."""

    Hparams: ClassVar[type] = BaseHparams
    needs_encoder: ClassVar[bool] = False
    # Bumped when a fix changes what the method computes with the same hyperparameters; a job's
    # identity holds it from 2 on (so jobs of the unchanged methods keep their hash).
    version: ClassVar[int] = 1

    def __init__(self, hparams: Any, components: Components, name: str = ""):
        self.hparams = hparams
        self.components = components
        self.name = name or type(self).__name__.lower()
        self.device = torch.device("cpu")
        self.execution = Execution.resolve(self.device)
        if self.needs_encoder and components.encoder is None:
            raise BenchmarkError(f"method {self.name} needs a frozen encoder (protocol key `encoder`)")

    def fit(self, train_data: DecodedSplit, *, recipe: Recipe, device: torch.device, log: RunLog,
            val_data: DecodedSplit | None = None) -> None:
        raise NotImplementedError

    def placed_encoder(self) -> FrozenEncoder:
        """The frozen encoder on this method's device, in the dtype its execution asks for."""
        encoder = self.components.encoder
        return encoder.to_device(self.execution.device, self.execution.encoder_dtype_for(encoder.is_clip))

    def predict(self, data: DecodedSplit) -> np.ndarray:
        raise NotImplementedError

    def report(self, data: DecodedSplit, log: RunLog) -> None:
        """Method-specific figures on a labelled split (the runner passes the source test split)."""

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class TrainedMethod(Method):
    """A method trained by the shared loop: subclasses build modules and define the loss."""

    augment_spec: ClassVar[AugmentSpec] = PAPER
    eval_batch_size: ClassVar[int] = 128

    def __init__(self, hparams: Any, components: Components, name: str = ""):
        super().__init__(hparams, components, name)
        self.model: nn.Module | None = None
        self.rng = random.Random(0)  # replaced by a seeded one at fit time
        self.input_size = 224
        self.train_labels: np.ndarray | None = None
        self.batch_index: np.ndarray | None = None  # set by the trainer before each training_step
        self.batch_flips: torch.Tensor | None = None
        self._train_features: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- to implement ------------------------------------------------------------------------
    def make_model(self) -> nn.Module:
        """The trainable modules (the encoder is NOT among them)."""
        raise NotImplementedError

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, {loss part: value}) for one augmented, normalised batch."""
        raise NotImplementedError

    def logits(self, x: torch.Tensor, rows: slice, data: DecodedSplit) -> torch.Tensor:
        """Test-time logits of eval-normalised images `x` (rows `rows` of `data`)."""
        raise NotImplementedError

    # -- hooks with defaults -------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    def after_step(self, index: np.ndarray, epoch: int) -> None:
        """Called after each optimizer step with the batch's sample indices (SCN relabels here)."""

    def epoch_metrics(self) -> dict[str, float]:
        """Extra per-epoch metrics (e.g. how many labels SCN changed)."""
        return {}

    # -- shared plumbing ----------------------------------------------------------------------
    def build(self, device: torch.device, input_size: int = 224, execution: Execution | None = None) -> None:
        """Fresh trainable modules on `device`, laid out and compiled as `execution` says (default:
        the "auto" precision, contiguous layout, no compilation)."""
        self.execution = execution or Execution.resolve(device)
        self.device = device
        self.input_size = input_size
        self.model = self.execution.prepare(self.make_model().to(device))
        if self.execution.compile:
            for module in self.model.modules():
                if isinstance(module, Backbone):
                    module.compile(mode=self.execution.compile)  # in place: state_dict keys stay as they are
        if self.components.encoder is not None:
            self.placed_encoder()

    def new_backbone(self) -> Backbone:
        return build_backbone(self.components.backbone)

    def train_mode(self, training: bool) -> None:
        self.model.train(training)

    def fit(self, train_data: DecodedSplit, *, recipe: Recipe, device: torch.device, log: RunLog,
            val_data: DecodedSplit | None = None) -> None:
        if getattr(self.hparams, "clip_features", "online") == "cached":
            if recipe.data_path != "cache":
                raise BenchmarkError(f"{self.name}: clip_features = 'cached' picks features by the batch's flips, "
                                     "which only the cache data path reports; use recipe.data_path = 'cache'")
            # Faster but different: encoder features of the un-augmented image and of its mirror,
            # computed once; training then sees no noise or erasing on the encoder branch.
            self.execution = Execution.from_recipe(device, recipe)
            encoder, cache = self.placed_encoder(), self.components.features
            self._train_features = (cache.get(encoder, train_data, device),
                                    cache.get(encoder, train_data, device, flipped=True))
        train_loop(self, train_data, recipe=recipe, device=device, log=log, val_data=val_data)
        self._train_features = None

    def predict(self, data: DecodedSplit) -> np.ndarray:
        if self.model is None:
            raise BenchmarkError(f"method {self.name}: predict before fit or load_state_dict")
        was_training = self.model.training
        self.model.eval()
        try:
            return predict_batches(data, self.execution, self.eval_batch_size,
                                   lambda x, rows: self.logits(x, rows, data))
        finally:
            self.model.train(was_training)

    def encoder_features(self, x: torch.Tensor) -> torch.Tensor:
        """Training features of the frozen encoder for the batch `x`.

        `clip_features="online"` (default, the paper's policy): the encoder sees the same augmented
        tensor as the backbone, every batch. `"cached"`: the precomputed features of the batch's
        un-augmented images, mirrored ones where the augmentation flipped the sample.
        """
        if self._train_features is None:
            return self.components.encoder(x)
        plain, mirrored = self._train_features
        index = torch.from_numpy(self.batch_index).to(plain.device, non_blocking=True)
        flips = self.batch_flips.to(plain.device)[:, None]
        return torch.where(flips, mirrored[index], plain[index]).to(x.device)

    def cached_features(self, data: DecodedSplit, rows: slice) -> torch.Tensor:
        """Eval features of rows of `data`, computed once per split and cached on disk."""
        return self.components.features.get(self.placed_encoder(), data, self.device)[rows]

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "hparams": dataclasses.asdict(self.hparams),
                "input_size": self.input_size, "precision": self.execution.precision}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | None = None) -> None:
        device = device or self.device
        self.build(device, state.get("input_size", 224), Execution.resolve(device, state.get("precision", "auto")))
        self.model.load_state_dict(state["model"])

