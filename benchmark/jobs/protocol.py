"""Protocol files: which datasets, sources, seeds, recipe, encoder and backbone a grid uses.

A protocol is a TOML file in `protocols/` (or any path). It is validated on load: an unknown key
or a value of the wrong type fails with a message naming the file and the key. CLI overrides
(`--set recipe.epochs=2`, `--seeds`, `--sources`) apply on top; the resolved protocol is what
jobs hash and what MLflow records.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.specs import BackboneSpec, EncoderSpec, backbone_families
from ..core.errors import BenchmarkError
from .protocol_files import protocol_dir
from ..training.recipe import Recipe
from ..core.sources import leave_one_out, parts as source_parts
from .sweep import Sweep

# The keys of a protocol's [tta] table (benchmark adapt's defaults).
TTA_KEYS = ("methods", "batch_size", "order", "dirichlet_alpha", "reset", "calibrate")


class ProtocolError(BenchmarkError):
    pass


@dataclass
class Protocol:
    name: str
    version: int = 1
    description: str = ""
    methods: list[str] = field(default_factory=lambda: ["cafe"])
    datasets: list[str] = field(default_factory=list)  # every dataset is a test target
    sources: list[str] = field(default_factory=list)  # default: all datasets; "a+b" trains on a and b together
    # Leave one domain out: the sources are, for each dataset, the union of all the others.
    leave_one_out: bool = False
    seeds: list[int] = field(default_factory=lambda: [3407])
    test_split: str = "test"
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    # Per-method encoders, for methods whose frozen encoder is not the protocol's (OFER's MAE):
    # {"ofer": {"id": "mae:vit_large_patch16:visualize", "path": "..."}}; see `encoder_for`.
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    # The pretraining axis: several backbones, each a job of its own (method x backbone x source x
    # seed). Items are ids "NAME:WEIGHTS" or tables (name, weights, path); empty: [backbone] alone.
    backbones: list[Any] = field(default_factory=list)
    recipe: Recipe = field(default_factory=Recipe)
    # Per-source recipe changes, e.g. AffectNet's balanced sampler with a fixed epoch size.
    source_recipe: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per-method recipe changes, e.g. OFER's batch of 128 (applied before source_recipe).
    method_recipe: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per-method hyperparameter overrides ({"cafe": {"lr": 1e-3}}).
    hparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per-dataset reader options ({"sfew": {"variant": "aligned"}}).
    dataset_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    skip_bad: bool = False
    # Hyperparameter sweep (benchmark.jobs.sweep): grid values or a random search.
    sweep: dict[str, Any] = field(default_factory=dict)
    # What `benchmark adapt` runs on this grid's trained models unless its flags say otherwise:
    # methods (TTA method names), batch_size, order, dirichlet_alpha, reset, calibrate. Not part of
    # any job's identity: adaptation never retrains.
    tta: dict[str, Any] = field(default_factory=dict)
    # Slices of the targets (benchmark.data.slices: "synth5/wild:occluded", "rafdb:gender=female",
    # "ferplus:fog@3") that `benchmark evaluate --protocol` tests every trained model on. Not part
    # of any job's identity: evaluating a slice never retrains.
    slices: list[str] = field(default_factory=list)

    def sweep_spec(self) -> Sweep:
        return Sweep.parse(self.sweep, self.name)

    def at(self, point: dict[str, Any]) -> "Protocol":
        """This protocol with a sweep point's values set (as `--set` would), checked."""
        if not point:
            return self
        hparams = {m: dict(v) for m, v in self.hparams.items()}
        recipe = dataclasses.asdict(self.recipe)
        for key, value in point.items():
            parts = key.split(".")
            if parts[0] == "hparams":
                hparams.setdefault(parts[1], {})[parts[2]] = value
            else:
                recipe[parts[1]] = value
        where = f"{self.name}: sweep point {point}"
        check_hparams(hparams, where)
        return dataclasses.replace(self, hparams=hparams, recipe=_build(Recipe, recipe, f"{where}: recipe"))

    def recipe_for(self, source: str, seed: int, method: str = "") -> Recipe:
        by_method, by_source = self.method_recipe.get(method, {}), self.source_recipe.get(source, {})
        where = f"{self.name}: " + (f"method_recipe.{method} + " if by_method else "") + f"source_recipe.{source}"
        return _build(Recipe, {**dataclasses.asdict(self.recipe), **by_method, **by_source, "seed": seed}, where)

    def encoder_for(self, method: str, default_id: str | None) -> EncoderSpec:
        """The frozen encoder of `method`'s jobs: its [encoders.<method>] table, else the method's
        own default encoder (keeping the protocol's path only for the protocol's id), else the
        protocol's."""
        table = self.encoders.get(method)
        if table is not None:
            return _build(EncoderSpec, {"id": default_id or self.encoder.id, **table}, f"{self.name}: encoders.{method}")
        if default_id is not None and default_id != self.encoder.id:
            return EncoderSpec(default_id)
        return self.encoder

    def backbone_specs(self) -> list[BackboneSpec]:
        """The backbones the grid runs: [backbone], or each of `backbones`."""
        return list(self.backbones) or [self.backbone]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def backbone_spec(item: Any, default: BackboneSpec, where: str) -> BackboneSpec:
    """One entry of `backbones`: an id "NAME:WEIGHTS" ("timm:convnext_atto:none"; the protocol's
    [backbone] path is kept for its own id) or a table with name, weights and path."""
    if isinstance(item, BackboneSpec):
        return item
    if isinstance(item, str):
        name, sep, weights = item.rpartition(":")
        if not sep or not name or not weights:
            raise ProtocolError(f"{where}: backbone {item!r}: expected NAME:WEIGHTS (e.g. resnet18:msceleb, "
                                "timm:convnext_atto:none, openclip:ViT-B-32:openai)")
        if name in backbone_families():  # "timm:resnet18": a family and a model, no weights
            raise ProtocolError(f"{where}: backbone {item!r} reads as the family {name!r} with weights {weights!r}; "
                                f"a backbone of a family is FAMILY:MODEL:WEIGHTS, e.g. {item}:none (random init; the weights each "
                                "family takes are in docs/methods.md)")
        return BackboneSpec(name, weights, default.path if item == default.id else None)
    if isinstance(item, dict):
        return _build(BackboneSpec, item, where)
    raise ProtocolError(f"{where}: expected a backbone id or a table, got {type(item).__name__} ({item!r})")


NESTED = {"encoder": EncoderSpec, "backbone": BackboneSpec, "recipe": Recipe}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ProtocolError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(fields))})")
    checked = {}
    for key, value in values.items():
        expected = _expected_type(cls, key)
        if expected is not None and not _type_ok(value, expected):
            raise ProtocolError(f"{where}.{key}: expected {expected.__name__}, got {type(value).__name__} ({value!r})")
        checked[key] = value
    try:
        return cls(**checked)
    except BenchmarkError as exc:
        raise ProtocolError(f"{where}: {exc}") from None


def _expected_type(cls: type, key: str) -> type | None:
    default_obj = cls(name="x") if cls is Protocol else cls()
    value = getattr(default_obj, key)
    if value is None:
        return None
    return type(value)


def _type_ok(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def parse_protocol(data: dict[str, Any], where: str, methods_checked: bool = True) -> Protocol:
    """The protocol in `data`, every key checked; with `methods_checked`, also every [hparams.<method>]
    against its method (which imports every method plugin, and so torch)."""
    data = dict(data)
    for key, cls in NESTED.items():
        if key in data:
            value = data[key]
            if key == "encoder" and isinstance(value, str):
                value = {"id": value}
            if not isinstance(value, dict):
                raise ProtocolError(f"{where}: [{key}] must be a table")
            data[key] = _build(cls, value, f"{where}: {key}")
    if "name" not in data:
        raise ProtocolError(f"{where}: missing key 'name'")
    protocol = _build(Protocol, data, where)
    protocol.backbones = [backbone_spec(item, protocol.backbone, f"{where}: backbones[{k}]")
                          for k, item in enumerate(protocol.backbones)]
    ids = [b.id for b in protocol.backbones]
    if len(set(ids)) != len(ids):
        raise ProtocolError(f"{where}: backbones: {', '.join(sorted({i for i in ids if ids.count(i) > 1}))} listed twice")
    for method, table in protocol.encoders.items():  # checked now, not when the grid expands
        if not isinstance(table, dict):
            raise ProtocolError(f"{where}: [encoders.{method}] must be a table (id, path)")
        _build(EncoderSpec, {"id": protocol.encoder.id, **table}, f"{where}: encoders.{method}")
    if not protocol.datasets:
        raise ProtocolError(f"{where}: 'datasets' is empty; list the test datasets")
    if protocol.leave_one_out:
        if len(protocol.datasets) < 2:
            raise ProtocolError(f"{where}: leave_one_out needs two datasets or more")
        folds = leave_one_out(protocol.datasets)
        other = [s for s in protocol.sources if s not in folds]
        if other:  # `sources` (or --sources) may pick some folds, nothing else
            raise ProtocolError(f"{where}: leave_one_out = true: source {other[0]!r} is not one of its folds "
                                f"({', '.join(folds)})")
        protocol.sources = protocol.sources or folds
    if not protocol.sources:
        protocol.sources = list(protocol.datasets)
    for source in protocol.sources:
        unknown = [d for d in source_parts(source) if d not in protocol.datasets]
        if unknown or len(set(source_parts(source))) != len(source_parts(source)):
            raise ProtocolError(f"{where}: source {source!r}: every dataset of a source must be in datasets, once "
                                f"({', '.join(unknown) or 'repeated'})")
    from ..data import DATASETS

    for name in protocol.datasets:
        DATASETS.get(name)  # a typo gets "did you mean"
    for source, changes in protocol.source_recipe.items():
        _build(Recipe, {**dataclasses.asdict(protocol.recipe), **changes}, f"{where}: source_recipe.{source}")
    if methods_checked:
        check_hparams(protocol.hparams, where)
    check_slices(protocol.slices, protocol.datasets, f"{where}: slices")
    unknown = sorted(set(protocol.tta) - set(TTA_KEYS))
    if unknown:
        raise ProtocolError(f"{where}: [tta] unknown key(s) {', '.join(unknown)} (known: {', '.join(TTA_KEYS)})")
    try:
        for point in Sweep.parse(protocol.sweep, where).points():
            protocol.at(point)  # every point's values checked before any work
    except ProtocolError:
        raise
    except BenchmarkError as exc:
        raise ProtocolError(str(exc)) from None
    return protocol


def check_hparams(hparams: dict[str, Any], where: str) -> None:
    """Every [hparams.<method>] names a known method, and every value passes that method's key,
    type and range checks: bad values stop here, before any job starts."""
    if not hparams:
        return
    from ..training.plugins import load_plugins

    METHODS = load_plugins()
    for method, overrides in hparams.items():
        if not isinstance(overrides, dict):
            raise ProtocolError(f"{where}: hparams.{method} must be a table of hyperparameters")
        try:
            METHODS.get(method).hparams(overrides)
        except BenchmarkError as exc:
            raise ProtocolError(f"{where}: hparams.{method}: {exc}") from None


def find_protocol(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        return path
    folder = protocol_dir()
    candidate = folder / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    known = ", ".join(p.stem for p in sorted(folder.glob("*.toml")))
    raise ProtocolError(f"no protocol {name_or_path!r}: not a .toml file, not in {folder} (known: {known})")


def parse_value(text: str) -> Any:
    """A --set value as TOML (numbers, booleans, lists, quoted strings); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ProtocolError(f"--set {dotted}: {key} is not a table")
    node[keys[-1]] = value


def load_protocol(name_or_path: str, overrides: dict[str, str] | None = None, methods_checked: bool = True) -> Protocol:
    path = find_protocol(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError(f"{path}: not valid TOML ({exc})") from None
    for dotted, text in (overrides or {}).items():
        if dotted.split(".")[0] == "encoder" and isinstance(data.get("encoder"), str):
            data["encoder"] = {"id": data["encoder"]}
        apply_override(data, dotted, parse_value(text))
    return parse_protocol(data, str(path), methods_checked)


def check_slices(slices: list[str], datasets: list[str], where: str) -> None:
    """Every slice names one of the protocol's datasets and a slice its families offer (nothing is read)."""
    from ..data.slices import base_dataset
    from ..data.slices.base import family_of

    if not isinstance(slices, list) or not all(isinstance(s, str) for s in slices):
        raise ProtocolError(f"{where}: expected a list of slice names, e.g. [\"synth5/wild:occluded\"]")
    for name in slices:
        if base_dataset(name) not in datasets:
            raise ProtocolError(f"{where}: {name!r} is cut from {base_dataset(name)!r}, which is not one of the "
                                f"protocol's datasets ({', '.join(datasets)})")
        try:
            family_of(name)
        except BenchmarkError as exc:
            raise ProtocolError(f"{where}: {exc}") from None
