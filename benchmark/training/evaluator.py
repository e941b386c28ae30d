"""Evaluating a job's model on every target (and its source's validation split) during training.

The runner hands `Evaluator.epoch_end` to `method.fit`; after each evaluated epoch it logs
`test/<target>/<metric>` and `source_val/<metric>` with step = epoch, the history the selection
rules of `benchmark table --selection` choose from. The last evaluation's probabilities are kept,
so the final results and artifacts need no second pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..data.cache import DecodedSplit
from .metrics import Evaluation, evaluate
from ..store import RunWriter, schema

EVAL_SECONDS = "time/eval_seconds"  # per evaluated epoch: the cost of the history


@dataclass
class Evaluator:
    method: object  # benchmark.training.method.Method
    targets: dict[str, DecodedSplit]  # target name -> its decoded test split
    log: RunWriter
    val: DecodedSplit | None = None
    epoch: int | None = None  # the last epoch evaluated
    probs: dict[str, np.ndarray] = field(default_factory=dict)  # of that epoch, by target
    evaluations: dict[str, Evaluation] = field(default_factory=dict)

    def epoch_end(self, epoch: int) -> dict[str, float]:
        """Evaluate every target and the validation split now, log it at step `epoch`; the metrics
        (a method evaluating several variants of its model, WiSE-FT's alphas, reads them)."""
        start = time.perf_counter()
        metrics = {}
        for target, split in self.targets.items():
            self.probs[target] = self.method.predict(split)
            self.evaluations[target] = evaluate(split.labels, probs=self.probs[target])
            metrics.update(self.evaluations[target].as_metrics(schema.target_prefix(target)))
        if self.val is not None:
            metrics.update(evaluate(self.val.labels, probs=self.method.predict(self.val)).as_metrics(schema.SOURCE_VAL))
        metrics[EVAL_SECONDS] = time.perf_counter() - start
        self.log.metrics(metrics, step=epoch)
        self.epoch = epoch
        return metrics

    def finish(self, default_epoch: int) -> None:
        """Evaluate the trained model now if the method never called epoch_end (logged as
        `default_epoch`); after fit, the last evaluation is of the trained model."""
        if self.epoch is None:
            self.epoch_end(default_epoch)


def in_domain_and_unseen(metrics: dict[str, float], source: str) -> tuple[float, float]:
    """The source's own test accuracy and the mean accuracy of the other targets in `metrics`."""
    accs = {target: v for key, v in metrics.items()
            if (parsed := schema.parse_test_metric(key)) and parsed[1] == "acc" for target in [parsed[0]]}
    own = schema.safe_name(source)
    unseen = [v for t, v in accs.items() if t != own]
    return accs.get(own, float("nan")), (sum(unseen) / len(unseen) if unseen else float("nan"))
