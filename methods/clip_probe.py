"""clip_probe: a multinomial logistic-regression probe on the frozen encoder's features.

The cheapest strong baseline a reviewer asked for, and the lower bound every CLIP-based method
must beat. Features are the encoder's eval features of the un-augmented training images (from
the feature cache); scikit-learn standardises them and fits the probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmark.api import BenchmarkError, Numerics, Method, NUM_CLASSES, check_range, register_method


@dataclass
class ProbeHparams:
    C: float = 1.0  # inverse L2 strength
    max_iter: int = 2000

    def __post_init__(self) -> None:
        check_range(self.C > 0, "C", self.C, "> 0")
        check_range(self.max_iter >= 1, "max_iter", self.max_iter, ">= 1")


@register_method("clip_probe", "logistic-regression probe on the frozen encoder's features (scikit-learn)")
class ClipProbe(Method):
    Hparams = ProbeHparams
    needs_encoder = True

    def __init__(self, hparams, components, name=""):
        super().__init__(hparams, components, name)
        self.pipeline = None

    def features(self, data) -> np.ndarray:
        return self.components.features.get(self.placed_encoder(), data, self.device).cpu().numpy()

    def fit(self, train_data, *, recipe, device, log, epoch_end=None) -> None:
        self.place(device, Numerics.resolve(device, recipe.precision))
        x, y = self.features(train_data), train_data.labels
        self.pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=self.hparams.C,
                                                                           max_iter=self.hparams.max_iter,
                                                                           random_state=recipe.seed))
        self.pipeline.fit(x, y)
        log.metrics({"train/acc": float(self.pipeline.score(x, y))}, step=1)
        if epoch_end is not None:
            epoch_end(1)

    def predict(self, data) -> np.ndarray:
        if self.pipeline is None:
            raise BenchmarkError(f"method {self.name}: predict before fit")
        proba = self.pipeline.predict_proba(self.features(data))
        out = np.zeros((len(proba), NUM_CLASSES))
        out[:, self.pipeline.classes_] = proba  # classes absent from training get probability 0
        return out

    def state_dict(self):
        scaler, probe = self.pipeline[0], self.pipeline[-1]
        # Tensors, not arrays: checkpoints load with torch.load(weights_only=True).
        return {k: torch.from_numpy(np.asarray(v)) for k, v in {
            "mean": scaler.mean_, "scale": scaler.scale_, "coef": probe.coef_, "intercept": probe.intercept_,
            "classes": probe.classes_}.items()}

    def load_state_dict(self, state) -> None:
        state = {k: np.asarray(v) for k, v in state.items()}
        scaler = StandardScaler()
        scaler.mean_, scaler.scale_ = state["mean"], state["scale"]
        scaler.n_features_in_ = len(state["mean"])
        probe = LogisticRegression()
        probe.coef_, probe.intercept_, probe.classes_ = state["coef"], state["intercept"], state["classes"]
        probe.n_features_in_ = scaler.n_features_in_
        self.pipeline = make_pipeline(scaler, probe)
