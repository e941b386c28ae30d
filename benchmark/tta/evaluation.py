"""One trained model adapted at test time on each of its targets: the TTA method with its
options (`TTASpec`), its evaluation identity, and the metrics of each target's online stream.

No retraining and no peeking: the method's hyperparameters are upstream's defaults unless set,
a temperature is fitted on the source's validation split only, and a target's labels are read
only to score the predictions the stream already made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import BenchmarkError
from ..core.labels import CLASSES
from ..data.cache import DecodedSplit
from ..training.calibration import fit_temperature, scale_probabilities
from ..training.metrics import evaluate
from . import methods as _builtin  # noqa: F401  (registers the built-in TTA methods)
from .base import NO_ADAPTATION, TTA_METHODS, Adaptable, options_from
from .stream import StreamResult, StreamSettings, run_stream, stream_order

IDENTITY_VERSION = 1  # bump when a TTA method's arithmetic changes, so its evaluations are redone
CALIBRATIONS = ("none", "temperature")


@dataclass(frozen=True)
class TTASpec:
    name: str
    options: Any

    @property
    def label(self) -> str:
        """How tables name it: the method, and any option set away from its default ("tent(lr=0.0001)")."""
        changed = {k: v for k, v in dataclasses.asdict(self.options).items()
                   if v != getattr(TTA_METHODS.get(self.name).Options(), k)}
        return self.name + (f"({','.join(f'{k}={v}' for k, v in sorted(changed.items()))})" if changed else "")

    def identity(self) -> dict[str, Any]:
        return {"tta": self.name, "options": dataclasses.asdict(self.options)}


def evaluation_label(spec: TTASpec, stream: StreamSettings, calibrate: str) -> str:
    """How tables name an evaluation: the method's label, and in brackets any stream setting away
    from the default and the calibration ("tent", "tent[batch_size=32]", "none[temperature]"), so
    evaluations of one model under different settings are never averaged together."""
    defaults = dataclasses.asdict(StreamSettings())
    changed = [f"{k}={v}" for k, v in dataclasses.asdict(stream).items() if v != defaults[k]
               and not (k == "dirichlet_alpha" and stream.order != "dirichlet")]
    if calibrate != "none":
        changed.append(calibrate)
    return spec.label + (f"[{','.join(changed)}]" if changed else "")


def tta_specs(names: list[str], sets: dict[str, str]) -> list[TTASpec]:
    """The TTA methods named, with `tta.<method>.<option>=value` settings applied; a setting for a
    method not named, or an option a method lacks, is an error that names it."""
    specs, used = [], set()
    for name in names:
        cls = TTA_METHODS.get(name)
        mine = {k.split(".", 2)[2]: v for k, v in sets.items() if k.startswith(f"tta.{name}.")}
        used |= {f"tta.{name}.{k}" for k in mine}
        specs.append(TTASpec(name, options_from(cls, mine)))
    unused = sorted(k for k in sets if k.startswith("tta.") and k not in used)
    if unused:
        raise BenchmarkError(f"--set {unused[0]}: not an option of a TTA method named in --tta "
                             f"({', '.join(names)}); the form is tta.<method>.<option>=<value>")
    return specs


def stream_seed(job_seed: int, target: str) -> int:
    """The stream's order seed for one target of a job: from the job's seed and the target's name."""
    return (job_seed * 1_000_003 + zlib.crc32(target.encode())) % (2 ** 32)


def evaluation_hash(job_hash: str, spec: TTASpec, stream: StreamSettings, target: str, seed: int,
                    calibrate: str, targets_before: tuple[str, ...] = ()) -> str:
    """The identity of one recorded evaluation: the trained job, the TTA method and options, the
    stream, the target and its seed, the calibration, and (continual) the targets adapted before."""
    identity = {"job": job_hash, **spec.identity(), "stream": dataclasses.asdict(stream), "target": target,
                "seed": seed, "calibrate": calibrate, "version": IDENTITY_VERSION}
    if stream.reset == "never":
        identity["after"] = list(targets_before)
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TargetOutcome:
    metrics: dict[str, float]  # test/<target>/... and tta/... values
    stream: StreamResult


@dataclass
class Outcome:
    refused: str | None = None
    targets: dict[str, TargetOutcome] = field(default_factory=dict)
    temperature: float = 1.0


def temperature_of(method, source_val: DecodedSplit | None, calibrate: str) -> float:
    """T fitted on the source's validation split with the trained model (1 without calibration)."""
    if calibrate not in CALIBRATIONS:
        raise BenchmarkError(f"--calibrate {calibrate}; expected one of {', '.join(CALIBRATIONS)}")
    if calibrate == "none":
        return 1.0
    if source_val is None:
        raise BenchmarkError("--calibrate temperature fits T on the source's validation split; this job has none")
    probs = method.predict(source_val)
    return fit_temperature(np.log(np.clip(probs, 1e-12, 1.0)), source_val.labels)


def adapt(method, state: dict[str, Any], spec: TTASpec, targets: dict[str, DecodedSplit], stream: StreamSettings,
          job_seed: int, source_val: DecodedSplit | None = None, temperature: float = 1.0,
          schema_prefix=None) -> Outcome:
    """`method` (a trained method; `state` its trained state dict, restored first) adapted by
    `spec` on each target's stream, in the order of `targets`. A method that cannot adapt this
    model is refused before any target is streamed."""
    if not callable(getattr(method, "logits", None)) and spec.name == NO_ADAPTATION:
        return _predicted(method, state, targets, temperature, schema_prefix)  # nothing to adapt: its own predict
    if not callable(getattr(method, "logits", None)):  # clip_probe, clip_zeroshot, tip_adapter: no network trained
        return Outcome(refused=f"{spec.name}: method {method.name} has no trained network to adapt "
                               "(only the shared loop's methods do)")
    method.load_state_dict(state)
    method.model.eval()
    model = Adaptable(method, len(CLASSES))
    model.probe(next(iter(targets.values())))
    cls = TTA_METHODS.get(spec.name)
    reason = cls.refuse(spec.options, model, source_val)
    if reason:
        return Outcome(refused=f"{spec.name}: {reason}")
    tta = cls(spec.options, model, source_val)
    tta.setup()
    tta.start()
    outcome = Outcome(temperature=temperature)
    for k, (target, data) in enumerate(targets.items()):
        if k and stream.reset == "per_domain":
            tta.reset()
        order = stream_order(data.labels, stream, stream_seed(job_seed, target))
        result = run_stream(tta, model, data, order, stream.batch_size)
        probs = scale_probabilities(result.probs, temperature)
        prefix = schema_prefix(target) if schema_prefix else f"test/{target}"
        metrics = evaluate(data.labels, probs=probs).as_metrics(prefix)
        metrics.update({"tta/seconds_per_image": result.seconds / max(len(data), 1), "tta/batches": result.batches,
                        "tta/temperature": temperature,
                        **{f"tta/{key}": value for key, value in result.counters.items()}})
        outcome.targets[target] = TargetOutcome(metrics, result)
    return outcome


def _predicted(method, state: dict[str, Any], targets: dict[str, DecodedSplit], temperature: float,
               schema_prefix=None) -> Outcome:
    """The plain evaluation (TTA none) of a method with no network of its own to stream through
    (a probe on cached features, zero-shot CLIP, Tip-Adapter): its predict on each target, which
    no stream order can change."""
    method.load_state_dict(state)
    outcome = Outcome(temperature=temperature)
    for target, data in targets.items():
        start = time.perf_counter()
        result = StreamResult(method.predict(data), 0.0, 1, {"forwards": 1.0})
        result.seconds = time.perf_counter() - start
        probs = scale_probabilities(result.probs, temperature)
        prefix = schema_prefix(target) if schema_prefix else f"test/{target}"
        metrics = evaluate(data.labels, probs=probs).as_metrics(prefix)
        metrics.update({"tta/seconds_per_image": result.seconds / max(len(data), 1), "tta/batches": 1.0,
                        "tta/temperature": temperature, "tta/forwards": 1.0})
        outcome.targets[target] = TargetOutcome(metrics, result)
    return outcome
