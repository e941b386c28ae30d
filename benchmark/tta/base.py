"""The contract of a test-time adaptation (TTA) method, and what every one of them shares.

A TTA method adapts a trained model (a `TrainedMethod` the store holds) while it predicts an
unlabelled test stream, batch by batch (benchmark.tta.stream). One file per method, registered
with `@register_tta`; the runner and the stream know none of them by name. A method class has:

    Options                 a dataclass of its hyperparameters, upstream's defaults (set with
                            `--set tta.<name>.<field>=...`; every field enters the evaluation hash)
    refuse(options, model)  why it cannot adapt this model (checked before any work), or None
    setup()                 configure the model (which layers adapt, the optimiser); then the
                            state every reset returns to is taken
    step(x, rows, data)     adapt on this batch and return its class probabilities (B, C): the
                            prediction upstream records for that batch
    reset()                 back to the trained model and an empty memory (per target, by default)
    counters                what it did, summed over a target (updates, samples passing filters)

`Adaptable` is the trained model as TTA sees it: its logits on a batch (with the frozen encoder's
cached features where the method reads them), the features feeding its final linear layer,
its norm layers.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from ..core.errors import BenchmarkError
from ..core.registry import Registry
from ..data.cache import DecodedSplit

TTA_METHODS: Registry[type["TTAMethod"]] = Registry("TTA method")
NO_ADAPTATION = "none"  # the plain prediction, through the same stream


def register_tta(name: str):
    """Class decorator: register a TTAMethod under `name` (its `name` attribute is set too)."""

    def decorator(cls):
        cls.name = name
        TTA_METHODS.add(name, cls)
        return cls

    return decorator


@dataclass(frozen=True)
class NoOptions:
    pass


# Which norm layers a method adapts: upstream TENT, SAR and EATA match BatchNorm2d only; their
# copies in SAR's and TTAB's code add LayerNorm and GroupNorm (for ViTs).
NORM_TYPES = {"bn": (nn.BatchNorm2d,), "bn+ln+gn": (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)}


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy of softmax(logits), computed stably (every upstream's helper)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def entropy_margin(fraction: float, classes: int) -> float:
    """SAR's and EATA's reliability threshold E0 = fraction * ln(classes). Upstream wrote
    0.4 * ln(1000) for ImageNet; with 7 classes that exceeds ln 7 and filters nothing, so the
    class count is the model's unless an option names upstream's 1000."""
    return fraction * math.log(classes)


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """A half-precision output (autocast) as float32; float32 and float64 as they are."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class Adaptable:
    """A trained method's model as a TTA method uses it (benchmark.training.trained_method)."""

    def __init__(self, method: Any, num_classes: int):
        if getattr(method, "model", None) is None:
            raise BenchmarkError(f"method {method.name}: no trained model to adapt")
        self.method = method
        self.model: nn.Module = method.model
        self.numerics = method.numerics
        self.device = method.device
        self.num_classes = num_classes
        self.head: nn.Linear | None = None  # found by `find_head` on the first batch
        self.head_checked = False

    def logits(self, x: torch.Tensor, rows: torch.Tensor, data: DecodedSplit) -> torch.Tensor:
        with self.numerics.autocast():
            return full_precision(self.method.logits(x, rows, data))

    def logits_and_features(self, x: torch.Tensor, rows: torch.Tensor, data: DecodedSplit):
        """(logits, the input of the final linear layer) of one forward."""
        head = self.find_head(x, rows, data)
        if head is None:
            raise BenchmarkError(f"method {self.method.name}: its logits are not the output of one linear layer")
        seen = []
        handle = head.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
        try:
            logits = self.logits(x, rows, data)
        finally:
            handle.remove()
        return logits, full_precision(seen[-1])

    def find_head(self, x: torch.Tensor, rows: torch.Tensor, data: DecodedSplit) -> nn.Linear | None:
        """The nn.Linear whose output the logits are, unchanged (an erm's or CAFE's `fc`), or
        None (a cosine head, a cache model's blend): found once, by one forward on a batch."""
        if self.head_checked:
            return self.head
        outputs = []
        hooks = [m.register_forward_hook(lambda mod, inputs, out: outputs.append((mod, out)))
                 for m in self.model.modules() if isinstance(m, nn.Linear) and m.out_features == self.num_classes]
        try:
            with torch.no_grad():
                logits = self.logits(x, rows, data)
        finally:
            for h in hooks:
                h.remove()
        self.head = next((m for m, out in reversed(outputs) if out.shape == logits.shape
                          and torch.equal(full_precision(out), logits)), None)
        self.head_checked = True
        return self.head

    def probe(self, data: DecodedSplit, batch_size: int = 8) -> None:
        """Look at the model once, on the first images of `data`, before any refusal is decided:
        which linear layer, if any, its logits are the output of."""
        rows = torch.arange(min(batch_size, len(data)))
        self.find_head(self.inputs(data, rows), rows, data)

    def inputs(self, data: DecodedSplit, rows: torch.Tensor) -> torch.Tensor:
        """Rows `rows` of `data` as the model's eval input (the evaluator's transform)."""
        from ..training.trainer import eval_inputs

        return eval_inputs(data, rows.numpy(), self.numerics)

    def norm_layers(self, norm_types: str) -> list[tuple[str, nn.Module]]:
        """The model's norm layers of the kinds `norm_types` names (NORM_TYPES), with their names."""
        return [(name, m) for name, m in self.model.named_modules() if isinstance(m, NORM_TYPES[norm_types])]

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.model.state_dict())

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state, strict=False)  # norm layers adapted without buffers have none to load


def use_batch_statistics(layers: list[tuple[str, nn.Module]]) -> None:
    """Normalise every BatchNorm among `layers` by the current batch's mean and biased variance,
    in train and eval mode alike, keeping no running average (TENT's configure_model)."""
    for _, m in layers:
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None


def affine_parameters(layers: list[tuple[str, nn.Module]]) -> list[nn.Parameter]:
    """The scale and shift of `layers`, the only parameters TENT, SAR and EATA update; every
    other parameter of the model is frozen."""
    params = []
    for _, m in layers:
        for p in (m.weight, m.bias):
            if p is not None:
                params.append(p)
    return params


def freeze_all_but(model: nn.Module, params: list[nn.Parameter]) -> None:
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def adapt_norm_affines(model: nn.Module, layers: list[tuple[str, nn.Module]]) -> list[nn.Parameter]:
    """TENT's set-up, shared by SAR and EATA: `layers` normalise by the batch, their scale and
    shift are the only trainable parameters of `model`; those parameters."""
    use_batch_statistics(layers)
    params = affine_parameters(layers)
    freeze_all_but(model, params)
    return params


def make_optimizer(params: list[nn.Parameter], optimizer: str, lr: float, momentum: float = 0.9,
                   nesterov: bool = False, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    if not params:
        raise BenchmarkError("no parameter to adapt")
    if optimizer == "adam":  # TENT's released config: Adam, betas (0.9, 0.999)
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                               weight_decay=weight_decay)
    raise BenchmarkError(f"optimizer = {optimizer!r}; expected adam or sgd")


class TTAMethod:
    """The base of every TTA method (the contract is in the module docstring)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    needs_source_val: ClassVar[bool] = False  # reads the source's validation split (EATA's Fisher)

    def __init__(self, options: Any, model: Adaptable, source_val: DecodedSplit | None = None):
        self.options = options
        self.model = model
        self.source_val = source_val
        self.counters: dict[str, float] = {}
        self._initial: dict[str, Any] | None = None
        self._optimizer_state: dict[str, Any] | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def check(cls, options: Any) -> str | None:
        """What is wrong with an option's value ("steps = 0: at least 1"), or None: checked when
        the options are read, before any model is loaded."""
        return None

    @classmethod
    def refuse(cls, options: Any, model: Adaptable, source_val: DecodedSplit | None) -> str | None:
        """Why this method cannot adapt `model` (a property of the model, not of the options), or None."""
        return None

    def setup(self) -> None:
        """Configure the model for adaptation; the base takes the state resets return to."""

    def start(self) -> None:
        """Call once after `setup`: what `reset` returns to."""
        self._initial = self.model.snapshot()
        if self.optimizer is not None:
            self._optimizer_state = copy.deepcopy(self.optimizer.state_dict())

    def reset(self) -> None:
        """The trained model, the optimiser's first state and an empty memory again."""
        self.model.restore(self._initial)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self._optimizer_state))
        self.clear_memory()

    def clear_memory(self) -> None:
        """Forget what the method keeps between batches (SAR's EMA, EATA's mean, T3A's supports)."""

    def count(self, **values: float) -> None:
        for key, value in values.items():
            self.counters[key] = self.counters.get(key, 0.0) + float(value)

    def step(self, x: torch.Tensor, rows: torch.Tensor, data: DecodedSplit) -> torch.Tensor:
        raise NotImplementedError


def options_from(cls: type[TTAMethod], values: dict[str, Any]) -> Any:
    """`cls.Options` with `values` (strings from --set are converted to each field's type),
    naming a field it lacks."""
    known = {f.name: f for f in fields(cls.Options)}
    defaults = cls.Options()
    out = {}
    for key, value in values.items():
        if key not in known:
            raise BenchmarkError(f"tta.{cls.name}.{key}: no such option (options: {', '.join(known) or 'none'})")
        default = getattr(defaults, key)
        if isinstance(value, str) and not isinstance(default, str):
            try:
                value = (value.lower() in ("1", "true", "yes")) if isinstance(default, bool) else type(default)(value)
            except ValueError:
                raise BenchmarkError(f"tta.{cls.name}.{key} = {value!r}: expected a {type(default).__name__}") from None
        out[key] = value
    options = cls.Options(**out)
    wrong = cls.check(options)
    if wrong:
        raise BenchmarkError(f"tta.{cls.name}.{wrong}")
    return options
