"""The base class of every method trained by the shared loop (benchmark.training.trainer).

A subclass builds its trainable modules and defines its loss:

    make_model() -> nn.Module                      the trainable modules (never the frozen encoder)
    training_step(batch) -> (loss, {part: value})  one augmented, normalised Batch
    logits(x, rows, data) -> Tensor                test-time logits of eval-normalised images

and may override the hooks `param_groups`, `optimizer_settings`, `step_extras` (the step's own
random draws), `after_step` (return a Relabel to change training labels), `epoch_metrics`.
Fitting, prediction, the encoder's features and checkpoints are shared.

`fuses = True` declares that the loop may train several jobs of the method as one stacked model
(benchmark.training.fused): `training_step` then reads only the batch's images, labels and
`extra`, draws nothing random itself (draws go in `step_extras`, made per job) and decides
nothing on the host (no `after_step` relabelling).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .augment import PAPER, AugmentSpec
from ..models.backbones import Backbone, build_backbone
from ..data.cache import DecodedSplit
from ..core.errors import BenchmarkError
from .numerics import Numerics
from .method import BaseHparams, Batch, Components, EpochEnd, Method, OptimizerSettings, Relabel, RunLog
from .recipe import Recipe
from .resume import ResumePoint
from .trainer import fit as train_loop, predict_batches

# SCN's and RUL's released code: with p = 0.5 apply one of {horizontal flip, Gaussian noise}.
ONE_OF_FLIP_NOISE = AugmentSpec(noise_p=0.0, flip_p=0.0, one_of_p=0.5)
CLIP_FEATURES = ("online", "cached")


def check_clip_features(method: str, value: str) -> None:
    if value not in CLIP_FEATURES:
        raise BenchmarkError(f"{method}: clip_features = {value!r}; expected one of {', '.join(CLIP_FEATURES)}")


@dataclass
class EncoderHparams(BaseHparams):
    """BaseHparams plus the choice of how the frozen encoder's training features are computed."""

    clip_features: str = "online"  # "online" (the paper) or "cached" (faster, no augmentation on F)


class TrainedMethod(Method):
    """A method trained by the shared loop: subclasses build modules and define the loss."""

    augment_spec: ClassVar[AugmentSpec] = PAPER
    eval_batch_size: ClassVar[int] = 128
    trained_by_loop: ClassVar[bool] = True
    # Whether `training_step` records its class logits (`batch.record_logits`), which training
    # extensions that act on logits need (spectral decoupling, RandConv's consistency loss).
    training_logits: ClassVar[bool] = False

    def __init__(self, hparams: Any, components: Components, name: str = ""):
        super().__init__(hparams, components, name)
        self.model: nn.Module | None = None
        self.rng = random.Random(0)  # the method's own draws (CAFE's drop masks); seeded by build
        self.input_size = 224
        self._train_features: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- to implement ------------------------------------------------------------------------
    def make_model(self) -> nn.Module:
        """The trainable modules (the encoder is NOT among them)."""
        raise NotImplementedError

    def training_step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, {loss part: value}) for one batch."""
        raise NotImplementedError

    def logits(self, x: torch.Tensor, rows: slice | torch.Tensor, data: DecodedSplit) -> torch.Tensor:
        """Test-time logits of eval-normalised images `x` (rows `rows` of `data`: a slice when
        evaluating, an index tensor when `benchmark explain` picks images)."""
        raise NotImplementedError

    # -- hooks with defaults -------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    def optimizer_settings(self) -> OptimizerSettings:
        return self.hparams.optimizer()

    def step_extras(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The step's inputs drawn on the host before `training_step` (CAFE's drop mask): the loop
        puts them in `batch.extra`, one draw per job and step, also when jobs are fused."""
        return {}

    def with_extras(self, batch: Batch) -> Batch:
        """`batch` with this step's `step_extras` drawn into `batch.extra` (what the loop does
        before every `training_step`)."""
        batch.extra = {**batch.extra, **self.step_extras(batch)}
        return batch

    def trains_on_encoder(self) -> bool:
        """Whether `training_step` reads the frozen encoder's features (`encoder_features`); fused
        jobs then run the encoder once on their batches together."""
        return self.needs_encoder

    def after_step(self, batch: Batch, epoch: int) -> Relabel | None:
        """Called after each optimizer step; a Relabel changes training labels (SCN)."""
        return None

    def epoch_metrics(self) -> dict[str, float]:
        """Extra per-epoch metrics (e.g. how many labels SCN changed)."""
        return {}

    # -- shared plumbing ----------------------------------------------------------------------
    def build(self, device: torch.device, input_size: int = 224, numerics: Numerics | None = None,
              seed: int = 0) -> None:
        """Fresh trainable modules on `device`, laid out and compiled as `numerics` says (default:
        the "auto" precision, contiguous layout, no compilation); the method's own random draws
        seeded from the job's seed."""
        self.place(device, numerics)
        self.input_size = input_size
        self.rng = random.Random(seed + 2)
        self.model = self.numerics.prepare(self.make_model().to(device))
        if self.numerics.compile:
            for module in self.model.modules():
                if isinstance(module, Backbone):
                    module.compile(mode=self.numerics.compile)  # in place: state_dict keys stay as they are
        if self.components.encoder is not None:
            self.placed_encoder()

    def new_backbone(self) -> Backbone:
        return build_backbone(self.components.backbone)

    def gradcam_layer(self) -> nn.Module:
        """The layer `benchmark explain` weighs by its gradients: the trained backbone's last block
        (ResNet's layer4, MobileNet's last conv block), for CAFE the backbone that computes the mask."""
        backbone = next((m for m in self.model.modules() if isinstance(m, Backbone)), None)
        if backbone is None:
            raise BenchmarkError(f"method {self.name}: no backbone to explain")
        return backbone.gradcam_layer()

    def train_mode(self, training: bool) -> None:
        self.model.train(training)

    def fit(self, train_data: DecodedSplit, *, recipe: Recipe, device: torch.device, log: RunLog,
            epoch_end: EpochEnd | None = None, resume: ResumePoint | None = None,
            validation: DecodedSplit | None = None) -> None:
        with self.training_features(train_data, recipe, device):
            train_loop(self, train_data, recipe=recipe, device=device, log=log, epoch_end=epoch_end, resume=resume,
                       validation=validation)

    def training_state(self) -> dict[str, Any]:
        """What the next epoch needs of the method (benchmark.training.resume): its modules and
        its own random draws."""
        return {"model": self.model.state_dict(), "rng": self.rng.getstate()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])  # in place: the optimiser's parameters stay the same
        self.rng.setstate(state["rng"])

    @contextlib.contextmanager
    def training_features(self, train_data: DecodedSplit, recipe: Recipe, device: torch.device):
        """While training: with `clip_features = "cached"`, the encoder's features of the split
        (plain and mirrored) computed once, for `encoder_features` to pick from."""
        if getattr(self.hparams, "clip_features", "online") == "cached":
            if recipe.data_path != "cache":
                raise BenchmarkError(f"{self.name}: clip_features = 'cached' picks features by the batch's flips, "
                                     "which only the cache data path reports; use recipe.data_path = 'cache'")
            # Faster but different: encoder features of the un-augmented image and of its mirror,
            # computed once; training then sees no noise or erasing on the encoder branch.
            self.place(device, Numerics.from_recipe(device, recipe))
            encoder, cache = self.placed_encoder(), self.components.features
            self._train_features = (cache.get(encoder, train_data, device),
                                    cache.get(encoder, train_data, device, flipped=True))
        try:
            yield
        finally:
            self._train_features = None

    @property
    def encodes_online(self) -> bool:
        """True when training features come from running the encoder on each augmented batch."""
        return self._train_features is None

    def predict(self, data: DecodedSplit) -> np.ndarray:
        if self.model is None:
            raise BenchmarkError(f"method {self.name}: predict before fit or load_state_dict")
        was_training = self.model.training
        self.model.eval()
        try:
            return predict_batches(data, self.numerics, self.eval_batch_size,
                                   lambda x, rows: self.logits(x, rows, data))
        finally:
            self.model.train(was_training)

    def encoder_features(self, batch: Batch) -> torch.Tensor:
        """Training features of the frozen encoder for the batch.

        `clip_features="online"` (default, the paper's policy): the encoder sees the same augmented
        tensor as the backbone, every batch. `"cached"`: the precomputed features of the batch's
        un-augmented images, mirrored ones where the augmentation flipped the sample.
        """
        if "encoder" in batch.extra:  # fused jobs: computed for all of them at once
            return batch.extra["encoder"]
        if self._train_features is None:
            return self.components.encoder(batch.images)
        plain, mirrored = self._train_features
        index = torch.from_numpy(batch.index).to(plain.device, non_blocking=True)
        flips = batch.flips.to(plain.device)[:, None]
        return torch.where(flips, mirrored[index], plain[index]).to(batch.images.device)

    def cached_features(self, data: DecodedSplit, rows: slice, policy: str = "paper") -> torch.Tensor:
        """Eval features of rows of `data`, computed once per split and cached on disk, through
        the input `policy` ("paper", or "clip": CLIP's own preprocessing)."""
        return self.components.features.get(self.placed_encoder(), data, self.device, policy=policy)[rows]

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "hparams": dataclasses.asdict(self.hparams),
                "input_size": self.input_size, "precision": self.numerics.precision}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | None = None) -> None:
        device = device or self.device
        self.build(device, state.get("input_size", 224), Numerics.resolve(device, state.get("precision", "auto")))
        self.model.load_state_dict(state["model"])
