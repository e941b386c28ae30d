"""Grid expansion and job identity.

One job per (method, backbone, source, seed): it trains once on the source's train split (a multi-source
job: on the union of its datasets' train splits, benchmark.core.sources) and evaluates on every
dataset's test split. Its identity is a short hash of the canonical JSON of everything that
changes its numbers — protocol name and version, method, resolved hyperparameters, recipe,
source, seed, data fingerprints, encoder id and weights digest (for methods that use it),
backbone id and weights digest, the input pipeline's version (decoding recipe and augmentation) —
and of nothing else (no paths, executor or device), so the same
job run anywhere has the same hash and a FINISHED one is never run twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..training.augment import AUGMENT_VERSION
from ..models.backbones import BackboneSpec, backbone_weights_digest, traits as backbone_traits
from ..data.cache import DECODE_RECIPE
from ..data import DATASETS, Samples
from ..data.roots import dataset_root
from ..data.slices import load_slice, split_name
from ..models.encoders import EncoderSpec, encoder_weights_digest
from ..core.errors import BenchmarkError
from .protocol import Protocol
from ..training.extensions import JobFacts, TrainingExtension
from ..training.recipe import Recipe
from ..core.sources import parts as source_parts
from ..store.schema import sweep_label
from .sweep import applies_to


@dataclass
class DataPlan:
    """Where each dataset lives and how to read it; Samples are parsed once and shared."""

    data_root: str | None = None
    dataset_paths: dict[str, str] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    skip_bad: bool = False
    _loaded: dict[tuple[str, str], Samples] = field(default_factory=dict, repr=False)
    _held_out: dict[tuple[str, str], tuple[Samples, Samples]] = field(default_factory=dict, repr=False)

    def samples(self, dataset: str, split: str) -> Samples:
        """The parsed split. The dataset option `channel_order = "bgr"` (default "rgb") feeds its
        evaluation splits (all but train) channel-swapped, as the authors' evaluation notebooks
        did for the AffectNet, SFEW and MMA columns of the paper's Table 1; the training split
        stays RGB (the bug was in evaluation only). It changes the split's fingerprint, and so
        the hash of every job tested on it."""
        key = (dataset, split)
        base, slice_name = split_name(dataset)
        if slice_name is not None and key not in self._loaded:  # a slice: cut from its dataset's split
            self._loaded[key] = load_slice(dataset, self.samples(base, split), self.root_of(base))
        if key not in self._loaded:
            options = dict(self.options.get(dataset, {}))
            order = options.pop("channel_order", "rgb")
            if order not in CHANNEL_ORDERS:
                raise BenchmarkError(f"dataset_options.{dataset}.channel_order = {order!r}; expected one of "
                                     f"{', '.join(CHANNEL_ORDERS)}")
            root = dataset_root(dataset, data_root=self.data_root, dataset_paths=self.dataset_paths)
            samples = DATASETS.get(dataset).load(root, split, skip_bad=self.skip_bad, **options)
            if order != "rgb" and split != "train":
                samples = dataclasses.replace(samples, channel_order=order, fingerprint="")
            self._loaded[key] = samples
        return self._loaded[key]

    def root_of(self, dataset: str) -> Path | None:
        """The dataset's folder, or None where it has none or none is known."""
        try:
            return dataset_root(dataset, data_root=self.data_root, dataset_paths=self.dataset_paths)
        except BenchmarkError:
            return None

    def has_split(self, dataset: str, split: str) -> bool:
        """Whether the dataset has that split where it lives (a generic folder may lack val/)."""
        reader = DATASETS.get(dataset)
        if split not in reader.splits:
            return False
        options = {k: v for k, v in self.options.get(dataset, {}).items() if k != "channel_order"}
        try:
            root = dataset_root(dataset, data_root=self.data_root, dataset_paths=self.dataset_paths)
        except BenchmarkError:
            root = None
        return reader.has_split(root, split, **options)

    def source_splits(self, dataset: str, val_fraction: float, seed: int) -> tuple[Samples, Samples | None]:
        """(training, validation) samples of a source: its own val split when it has one; else,
        with `val_fraction` > 0, a seeded class-stratified share of its train split held out
        (recipe.val_fraction); else no validation split."""
        train = self.samples(dataset, "train")
        if self.has_split(dataset, "val"):
            return train, self.samples(dataset, "val")
        if val_fraction <= 0:
            return train, None
        key = (dataset, f"train-{val_fraction}-{seed}")
        if key not in self._held_out:
            self._held_out[key] = held_out(train, val_fraction, seed)
        return self._held_out[key]


def held_out(samples: Samples, fraction: float, seed: int) -> tuple[Samples, Samples]:
    """`samples` split into (train, val) by scikit-learn's train_test_split, stratified by class
    where every class has two samples or more; each part has its own fingerprint."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(samples))
    counts = np.bincount(samples.labels)
    stratify = samples.labels if counts[counts > 0].min() >= 2 else None
    train_rows, val_rows = train_test_split(rows, test_size=fraction, random_state=seed, stratify=stratify)

    def part(index: np.ndarray, split: str) -> Samples:
        index = np.sort(index)
        return dataclasses.replace(
            samples, split=split, ids=[samples.ids[i] for i in index], labels=samples.labels[index],
            pixels=None if samples.pixels is None else samples.pixels[index],
            file_sizes=None if samples.file_sizes is None else samples.file_sizes[index],
            boxes=None if samples.boxes is None else samples.boxes[index], fingerprint="")

    return part(train_rows, "train"), part(val_rows, "val")


@dataclass
class Job:
    protocol: str
    method: str
    source: str
    seed: int
    targets: list[str]
    test_split: str
    hparams: dict[str, Any]
    recipe: Recipe
    encoder: EncoderSpec | None  # None when the method uses no encoder
    encoder_digest: str | None
    backbone: BackboneSpec
    backbone_digest: str
    fingerprints: dict[str, str]  # "<dataset>:<split>" -> fingerprint
    identity: dict[str, Any]
    hash: str
    sweep: dict[str, Any] = field(default_factory=dict)  # the swept values that apply to this method

    @property
    def label(self) -> str:
        point = f", {sweep_label(self.sweep)}" if self.sweep else ""
        return f"{self.method} on {self.source} (seed {self.seed}{point})"


CHANNEL_ORDERS = ("rgb", "bgr")
PIPELINE_VERSION = f"{DECODE_RECIPE}+augment-v{AUGMENT_VERSION}"


def job_hash(identity: dict[str, Any]) -> str:
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def expand(protocol: Protocol, methods: list[str], plan: DataPlan) -> list[Job]:
    """The grid: methods x sweep points x backbones x sources x seeds, in that order; a job that
    several points leave unchanged (a method the swept keys do not touch) appears once."""
    from ..training.plugins import load_plugins

    METHODS = load_plugins()
    entries = {m: METHODS.get(m) for m in methods}  # typos fail before any work
    encoder_digests: dict[EncoderSpec, str] = {}  # one digest per weights file, however many methods use it
    backbones = [(spec, backbone_weights_digest(spec)) for spec in protocol.backbone_specs()]  # bad names stop here
    test_prints = {f"{t}:{protocol.test_split}": plan.samples(t, protocol.test_split).fingerprint
                   for t in protocol.datasets}
    jobs, seen = [], set()
    points = protocol.sweep_spec().points() or [{}]
    for method, point in ((m, p) for m in methods for p in points):
        entry = entries[method]
        variant = protocol.at(point)
        swept = {k: v for k, v in point.items() if applies_to(k, method)}
        hparams = dataclasses.asdict(entry.hparams(variant.hparams.get(method)))
        encoder = variant.encoder_for(method, entry.cls.default_encoder) if entry.cls.needs_encoder else None
        if encoder is not None and encoder not in encoder_digests:
            encoder_digests[encoder] = encoder_weights_digest(encoder)
        encoder_digest = encoder_digests.get(encoder)
        for (backbone, backbone_digest), source in ((b, s) for b in backbones for s in protocol.sources):
            for seed in protocol.seeds:
                recipe = variant.recipe_for(source, seed, method)
                _check_extensions(recipe, method, entry.cls, backbone, source, plan)
                prints = dict(test_prints)
                for part in source_parts(source):  # one dataset, or each of a multi-source job's
                    prints[f"{part}:train"] = plan.samples(part, "train").fingerprint
                    if recipe.val_fraction > 0 and not plan.has_split(part, "val"):  # held out: its rows are in the hash
                        train, val = plan.source_splits(part, recipe.val_fraction, seed)
                        prints.update({f"{part}:train": train.fingerprint, f"{part}:val": val.fingerprint})
                recipe_id = recipe.identity()
                identity = {
                    "protocol": protocol.name, "protocol_version": protocol.version, "method": method,
                    "hparams": hparams, "recipe": recipe_id, "source": source, "seed": seed,
                    "data": prints, "test_split": protocol.test_split,
                    "encoder": None if encoder is None else {"id": encoder.id, "digest": encoder_digest},
                    "backbone": {"id": backbone.id, "digest": backbone_digest},
                    "pipeline": PIPELINE_VERSION,
                }
                if entry.cls.version > 1:
                    identity["method_version"] = entry.cls.version
                job = Job(protocol.name, method, source, seed, list(protocol.datasets), protocol.test_split,
                          hparams, recipe, encoder, encoder_digest if encoder else None, backbone,
                          backbone_digest, prints, identity, job_hash(identity), swept)
                if job.hash not in seen:
                    seen.add(job.hash)
                    jobs.append(job)
    return jobs


def _check_extensions(recipe: Recipe, method: str, cls: type, backbone: BackboneSpec, source: str,
                      plan: DataPlan) -> None:
    """Every training extension whose options the recipe sets may refuse the job, before any job
    trains: all of them for a method the shared loop does not train (zero-shot CLIP, a probe),
    else each by its own rule (by the backbone's name alone: a timm transformer under MixStyle is
    refused when its job builds the model)."""
    chosen = [(e, ", ".join(f"recipe.{k}" for k, v in e.defaults().items() if getattr(recipe, k) != v))
              for e in recipe.extensions()]
    chosen = [(e, options) for e, options in chosen if options]
    if chosen and not cls.trained_by_loop:
        raise BenchmarkError(f"{', '.join(o for _, o in chosen)}: method {method} is not trained by the shared loop, "
                             "so it wears no training extension")
    if not any(e.refuse.__func__ is not TrainingExtension.refuse.__func__ for e, _ in chosen):
        return
    family = backbone_traits(backbone)
    facts = JobFacts(method=method, backbone_id=backbone.id, backbone_family=family.family,
                     backbone_feature_maps=family.feature_maps, backbone_grad_checkpointing=family.grad_checkpointing,
                     trained_by_loop=cls.trained_by_loop, training_logits=getattr(cls, "training_logits", False),
                     has_validation=recipe.val_fraction > 0 or all(plan.has_split(part, "val")
                                                                    for part in source_parts(source)))
    for extension, options in chosen:
        why = extension.refuse(recipe, facts)
        if why:
            raise BenchmarkError(f"{options}: {why} ({method} on {source})")


def not_applicable(protocol: Protocol, methods: list[str]) -> dict[str, str]:
    """method -> why, for the methods that cannot run with the encoder the protocol gives them
    (a text-tower method with a torchvision encoder): a grid skips them and says so."""
    from ..models.clip_text import NotApplicable, require_text_tower
    from ..training.plugins import load_plugins

    registry, out = load_plugins(), {}
    for method in methods:
        cls = registry.get(method).cls
        if cls.needs_text_tower:
            try:
                require_text_tower(method, protocol.encoder_for(method, cls.default_encoder))
            except NotApplicable as exc:
                out[method] = str(exc)
    return out


def plan_from(protocol: Protocol, data_root: str | Path | None, dataset_paths: dict[str, str] | None) -> DataPlan:
    return DataPlan(str(data_root) if data_root else None, dict(dataset_paths or {}),
                    protocol.dataset_options, protocol.skip_bad)
