"""Evaluation metrics, all from scikit-learn: accuracy (the paper's), mean per-class accuracy,
macro-F1, per-class accuracy and the confusion matrix, over the seven canonical classes; with the
probabilities, their calibration (benchmark.training.calibration: ECE, NLL, Brier)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from ..core.labels import CLASSES
from .calibration import Calibration, calibration

LABELS = list(range(len(CLASSES)))

# A model has collapsed when it predicts (almost) one class: more than this share of a test set's
# predictions in one class, or an accuracy within this margin of always predicting the majority.
COLLAPSE_ONE_CLASS_SHARE = 0.9
COLLAPSE_MAJORITY_MARGIN = 0.02


@dataclass
class Evaluation:
    acc: float
    mean_class_acc: float  # mean over the classes present in the test set
    macro_f1: float
    class_acc: dict[str, float]  # NaN for a class absent from the test set
    confusion: np.ndarray  # rows = true class, columns = predicted
    calibration: Calibration | None = None  # when evaluated from probabilities

    def as_metrics(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}/acc": self.acc, f"{prefix}/mean_class_acc": self.mean_class_acc,
               f"{prefix}/macro_f1": self.macro_f1}
        out.update({f"{prefix}/acc/{name}": v for name, v in self.class_acc.items() if not np.isnan(v)})
        if self.calibration is not None:
            out.update(self.calibration.as_metrics(prefix))
        return out


def evaluate(labels: np.ndarray, predictions: np.ndarray | None = None, probs: np.ndarray | None = None) -> Evaluation:
    """The metrics of `predictions` (class indices), or of `probs` (N, C): then the predictions
    are their argmax and the calibration metrics come too."""
    if probs is not None:
        predictions = np.asarray(probs).argmax(1)
    present = sorted(set(np.asarray(labels).tolist()))
    per_class = recall_score(labels, predictions, labels=LABELS, average=None, zero_division=np.nan)
    return Evaluation(
        acc=float(accuracy_score(labels, predictions)),
        mean_class_acc=float(recall_score(labels, predictions, labels=present, average="macro", zero_division=0)),
        macro_f1=float(f1_score(labels, predictions, labels=present, average="macro", zero_division=0)),
        class_acc={name: float(per_class[k]) for k, name in enumerate(CLASSES)},
        confusion=confusion_matrix(labels, predictions, labels=LABELS),
        calibration=None if probs is None or not len(labels) else calibration(labels, probs),
    )


def collapse(labels: np.ndarray, predictions: np.ndarray) -> str | None:
    """Why these predictions look like a collapsed model's (COLLAPSE_* above), or None."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if not len(labels):
        return None
    counts = np.bincount(predictions, minlength=len(CLASSES))
    top = int(counts.argmax())
    share = counts[top] / len(predictions)
    majority = np.bincount(labels, minlength=len(CLASSES)).max() / len(labels)
    acc = float(accuracy_score(labels, predictions))
    if share > COLLAPSE_ONE_CLASS_SHARE:
        return f"{100 * share:.0f}% of its predictions are {CLASSES[top]!r}"
    if acc <= majority + COLLAPSE_MAJORITY_MARGIN:
        return (f"accuracy {100 * acc:.2f} is within {100 * COLLAPSE_MAJORITY_MARGIN:.0f} points of always "
                f"predicting the majority class ({100 * majority:.2f})")
    return None
