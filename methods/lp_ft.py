"""LP-FT (AnanyaKumar/transfer_learning): a linear probe on the frozen backbone, then the whole
network fine-tuned from the probe's head. Any backbone of the harness.

Stage 1, the probe (`log_reg_sk.py`): the backbone's features of the training split, one pass
through the *training* transform (augmented, as upstream extracts them), the network in eval mode;
standardised with **one scalar** mean and std over every entry; scikit-learn's
LogisticRegression(max_iter=200, warm_start=True, random_state=seed) fitted for each C of
logspace(-7, 2, 50) in ascending order, each fit warm-started from the previous; the C with the
best accuracy on the source's validation split kept (the first best; without a validation split,
the training split's, and the run says so). Its weights are mapped back to raw features,
W = W' / s, b = b' - (m / s) sum_j W'_kj, and classes absent from training get zero rows.

Stage 2, fine-tuning (`baseline_train.py`): backbone + linear head initialised with those weights;
every parameter trains with SGD (momentum 0.9, weight decay 0), CosineAnnealingLR over the
epochs stepped per epoch, cross-entropy; "valmode" (the README's LP-FT command) keeps the whole
network in eval mode while training, so BatchNorm uses and never updates its running statistics.
Upstream sweeps the rate over 3e-7 ... 1e-2 and early-stops on ID validation accuracy; here the
rate is one hyperparameter (sweep it with --sweep hparams.lp_ft.lr=...) and the table's selection
rule chooses the epoch. Transforms: for a CLIP backbone (openclip:*) CLIP's input policy and no
augmentation (upstream's CLIP configs resize and centre-crop for training too); otherwise the
harness's ImageNet normalisation, RandomResizedCrop (0.08-1) and a flip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.api import (AugmentSpec, Batch, NUM_CLASSES, OptimizerSettings, TrainedMethod, augment, check_range,
                           normalize, random_resized_crop, register_method, to_clip_input, to_device_batch)

FLIP_ONLY = AugmentSpec(noise_p=0.0, flip_p=0.5, erase_p=0.0)
NO_AUGMENT = AugmentSpec(noise_p=0.0, flip_p=0.0, erase_p=0.0)


@dataclass
class LpFtHparams:
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    valmode: bool = True  # the whole network in eval mode while fine-tuning
    num_reg_values: int = 50  # C over logspace(-7, 2, num_reg_values)
    probe_max_iter: int = 200
    crop_scale_min: float = 0.08

    def __post_init__(self) -> None:
        check_range(self.lr > 0, "lr", self.lr, "> 0")
        check_range(self.num_reg_values >= 1, "num_reg_values", self.num_reg_values, ">= 1")
        check_range(0 < self.crop_scale_min <= 1, "crop_scale_min", self.crop_scale_min, "in (0, 1]")

    def optimizer(self) -> OptimizerSettings:
        return OptimizerSettings(self.lr, self.weight_decay, 1.0, optimizer="sgd", momentum=self.momentum,
                                 schedule="cosine")


def normalize_features(train: np.ndarray) -> tuple[float, float]:
    """log_reg_sk.normalize_features' statistics: one scalar mean and std over every entry."""
    return float(np.mean(train)), float(np.std(train))


def inv_normalize_weights(coef: np.ndarray, intercept: np.ndarray, mean: float, std: float):
    """Weights for standardised features (f - m) / s mapped back to raw features."""
    return coef / std, intercept - (mean / std) * coef.sum(axis=1)


def pad_head(coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray, num_classes: int = NUM_CLASSES):
    """Zero rows for the classes the training labels lack; a binary probe's single row w, b as
    [-w/2, w/2], [-b/2, b/2] (the same softmax)."""
    if coef.shape[0] == 1 and len(classes) == 2:
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    out_w, out_b = np.zeros((num_classes, coef.shape[1])), np.zeros(num_classes)
    out_w[classes], out_b[classes] = coef, intercept
    return out_w, out_b


def warm_started_probe(train_x, train_y, val_x, val_y, num: int, max_iter: int, seed: int):
    """test_log_reg_warm_starting: C ascending over logspace(-7, 2, num), each fit warm-started;
    (coef, intercept, classes, best C, its validation accuracy) of the first best."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(random_state=seed, warm_start=True, max_iter=max_iter)
    best = None
    for C in np.logspace(-7, 2, num):
        probe.C = C
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # upstream's 200 iterations: expected
            probe.fit(train_x, train_y)
        acc = float((probe.predict(val_x) == val_y).mean())
        if best is None or acc > best[4]:
            best = (probe.coef_.copy(), probe.intercept_.copy(), probe.classes_.copy(), float(C), acc)
    return best


@register_method("lp_ft", "LP-FT: logistic-regression probe on the frozen backbone, then every parameter "
                 "fine-tuned from its head (SGD, cosine, network in eval mode)")
class LpFt(TrainedMethod):
    Hparams = LpFtHparams
    training_logits = True
    clip_fp32 = True  # upstream casts CLIP's tower to fp32

    def __init__(self, hparams, components, name=""):
        super().__init__(hparams, components, name)
        self._probe_data = None

    @property
    def clip_backbone(self) -> bool:
        return self.components.backbone.family == "openclip"

    @property
    def augment_spec(self) -> AugmentSpec:
        return NO_AUGMENT if self.clip_backbone else FLIP_ONLY

    def make_model(self) -> nn.Module:
        backbone = self.new_backbone()
        return nn.ModuleDict({"backbone": backbone, "head": nn.Linear(backbone.dim, NUM_CLASSES)})

    def train_mode(self, training: bool) -> None:
        self.model.train(training and not self.hparams.valmode)

    def inputs(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """The backbone's input: CLIP's policy for a CLIP backbone (no augmentation), else the
        harness's normalisation after a RandomResizedCrop when training."""
        size = tuple(x.shape[-2:])
        if self.clip_backbone:
            return to_clip_input(x, size)
        return random_resized_crop(x, size, (self.hparams.crop_scale_min, 1.0), policy="paper") if train else x

    def training_step(self, batch: Batch):
        x = self.inputs(batch.images, train=True)
        loss = F.cross_entropy(batch.record_logits(self.model["head"](self.model["backbone"](x))), batch.labels)
        return loss, {"ce": loss.detach()}

    def logits(self, x, rows, data) -> torch.Tensor:
        return self.model["head"](self.model["backbone"](self.inputs(x, train=False)))

    # -- the probe ---------------------------------------------------------------------------------
    def fit(self, train_data, *, recipe, device, log, epoch_end=None, resume=None, validation=None) -> None:
        self._probe_data = (train_data, validation, recipe, log)
        try:
            super().fit(train_data, recipe=recipe, device=device, log=log, epoch_end=epoch_end, resume=resume,
                        validation=validation)
        finally:
            self._probe_data = None

    def build(self, device, input_size=224, numerics=None, seed=0) -> None:
        super().build(device, input_size, numerics, seed)
        if self._probe_data is not None:
            self.linear_probe(*self._probe_data)

    @torch.no_grad()
    def _features(self, data, augmented: bool, seed: int) -> np.ndarray:
        self.model.eval()
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out = []
        for begin in range(0, len(data), self.eval_batch_size):
            images = to_device_batch(data.read(slice(begin, begin + self.eval_batch_size)), self.device)
            x = augment(images, self.augment_spec, gen) if augmented else normalize(images)
            x = self.inputs(x, train=augmented)
            out.append(self.model["backbone"](x).float().cpu())
        return torch.cat(out).numpy()

    def linear_probe(self, train_data, validation, recipe, log) -> None:
        train_x = self._features(train_data, augmented=True, seed=recipe.seed)
        mean, std = normalize_features(train_x)
        train_y = np.asarray(train_data.labels)
        if validation is not None and len(validation):
            val_x, val_y = self._features(validation, augmented=False, seed=recipe.seed), np.asarray(validation.labels)
        else:
            val_x, val_y = train_x, train_y
        coef, intercept, classes, C, acc = warm_started_probe((train_x - mean) / std, train_y, (val_x - mean) / std,
                                                              val_y, self.hparams.num_reg_values,
                                                              self.hparams.probe_max_iter, recipe.seed)
        coef, intercept = pad_head(*inv_normalize_weights(coef, intercept, mean, std), classes)
        head = self.model["head"]
        head.weight.data.copy_(torch.as_tensor(coef, dtype=head.weight.dtype))
        head.bias.data.copy_(torch.as_tensor(intercept, dtype=head.bias.dtype))
        log.metrics({"lp/C": C, "lp/val_acc": acc, "lp/on_validation_split": float(validation is not None)}, step=0)
