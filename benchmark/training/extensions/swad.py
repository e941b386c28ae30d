"""SWAD, dense stochastic weight averaging, with khanrc/swad's LossValley rule (`domainbed/swad.py`,
`domainbed/lib/swa_utils.py`, `domainbed/trainer.py`).

Training is cut into segments of `swad_eval_steps` optimiser steps. A segment keeps the running
mean of the weights after each of its steps (the first segment holds step 0 alone); at its end
the *online* model's loss on the source's validation split is taken as the segment's loss and a
fresh segment starts. LossValley watches those losses through two FIFO windows, Qc
(`swad_n_converge` = 3) and Qs (`swad_n_tolerance` = 6):

- not yet converged: once Qc is full and its oldest segment has the smallest loss, training has
  converged there; the threshold is tau = (1 + `swad_tolerance_ratio`) x the mean loss of Qc, and
  the final average starts from the segments before it back to the last one above tau;
- converged: each time the oldest segment of Qs is at or after the convergence point, it joins
  the average when some loss in Qs is at or below tau; when every loss of Qs is above tau the
  valley is dead and training stops early;
- at the end: the newest segments of Qs join while the smallest remaining loss is at or below tau.
  Never converged: the last segment's average is the model.

Each addition is an equal-weight running mean of segment means. Only parameters are averaged.

BatchNorm (`swad_bn`), as upstream: "freeze" (its default `freeze_bn`) keeps every BatchNorm in
evaluation mode while training (running statistics frozen, normalising with them; the affine
parameters train), so the average's statistics are the frozen ones; "recompute" trains BatchNorm
as the method does and, once averaged, re-estimates the statistics on `swad_bn_batches` (500)
training batches (upstream's `update_bn`).

Upstream rounds its number of steps to a multiple of the evaluation interval plus one, so that
the last step is an evaluation and no partial segment is ever averaged: here training stops
after the last step that ends a segment, ⌊(T - 1) / f⌋·f (0-based) of the T the recipe plans,
and the steps after it are not taken.

Upstream's rule has quirks, kept by default (`swad_quirks = True`) and switched off for the clean
rule (every segment from the valley's start to its end counted once):
  a. the average made at convergence has count 0, so its first addition overwrites it;
  b. off by one: the oldest candidate of the start search below tau (or the one after the last
     above tau) is skipped;
  c. the converged segment is added at convergence and again when it becomes the oldest of Qs;
  d. converging before Qs is full adds Qs's unchanging oldest segment at every evaluation.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from .base import TrainingExtension, check, is_off, register_extension

BN_MODES = ("freeze", "recompute")


@dataclass
class Average:
    """A running mean of weights, as swa_utils.AveragedModel keeps it: the parameters (the first
    update copies, later ones a + (p - a) / (n + 1)), the buffers of the copy it was made from,
    the number of updates and the span of steps it covers."""

    params: list[torch.Tensor]
    buffers: list[torch.Tensor]
    n_averaged: int = 0
    start_step: int = -1
    end_step: int = -1
    end_loss: float = math.nan

    @classmethod
    def of(cls, params: Iterable[torch.Tensor], buffers: Iterable[torch.Tensor]) -> "Average":
        return cls([p.detach().clone() for p in params], [b.detach().clone() for b in buffers])

    def copy(self) -> "Average":
        """A fresh average (count 0, no span) from this one's weights and buffers."""
        return Average.of(self.params, self.buffers)

    @torch.no_grad()
    def update(self, params: Iterable[torch.Tensor], step: int | None = None, start_step: int | None = None,
               end_step: int | None = None) -> None:
        for mean, p in zip(self.params, params):
            if self.n_averaged == 0:
                mean.copy_(p.detach())
            else:
                mean.copy_(mean + (p.detach() - mean) / (self.n_averaged + 1))
        self.n_averaged += 1
        if step is not None:
            start_step = step if start_step is None else start_step
            end_step = step if end_step is None else end_step
        if start_step is not None and self.n_averaged == 1:
            self.start_step = start_step
        if end_step is not None:
            self.end_step = end_step

    def state_dict(self) -> dict[str, Any]:
        return {"params": self.params, "buffers": self.buffers, "n_averaged": self.n_averaged,
                "start_step": self.start_step, "end_step": self.end_step, "end_loss": self.end_loss}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Average":
        return cls(list(state["params"]), list(state["buffers"]), int(state["n_averaged"]), int(state["start_step"]),
                   int(state["end_step"]), float(state["end_loss"]))


@dataclass
class LossValley:
    """The rule that picks which segments are averaged (upstream's LossValley; `quirks=False` the
    clean rule). `update(segment, loss)` at each evaluation, `final()` at the end of training."""

    n_converge: int = 3
    n_tolerance: int = 6
    tolerance_ratio: float = 0.3
    quirks: bool = True
    converge_q: deque = field(default_factory=deque)
    smooth_q: deque = field(default_factory=deque)
    final_model: Average | None = None
    converge_step: int | None = None
    threshold: float | None = None
    dead_valley: bool = False
    dead_step: int | None = None
    last_added: int = -1  # the clean rule's newest member (by end step)

    @property
    def is_converged(self) -> bool:
        return self.converge_step is not None

    def _add(self, segment: Average, **steps) -> None:
        self.final_model.update(segment.params, **steps)
        self.last_added = max(self.last_added, segment.end_step)

    def _push(self, segment: Average) -> None:
        self.converge_q.append(segment)
        self.smooth_q.append(segment)
        while len(self.converge_q) > self.n_converge:
            self.converge_q.popleft()
        while len(self.smooth_q) > self.n_tolerance:
            self.smooth_q.popleft()

    def update(self, segment: Average, loss: float) -> None:
        """The segment that just ended, with the online model's validation loss at its end."""
        if self.dead_valley:
            return
        segment.end_loss = loss
        self._push(segment)
        if not self.is_converged:
            if len(self.converge_q) < self.n_converge:
                return
            if int(np.argmin([s.end_loss for s in self.converge_q])) == 0:
                self._converge()
            return
        oldest = self.smooth_q[0]
        if oldest.end_step < self.converge_step:
            return
        if min(s.end_loss for s in self.smooth_q) > self.threshold:
            self.dead_valley, self.dead_step = True, segment.end_step
            return
        if self.quirks or oldest.end_step > self.last_added:
            self._add(oldest, start_step=oldest.start_step, end_step=oldest.end_step)

    def _converge(self) -> None:
        converged = self.converge_q[0]
        self.converge_step = converged.end_step
        self.final_model = converged.copy()
        self.threshold = float(np.mean([s.end_loss for s in self.converge_q])) * (1.0 + self.tolerance_ratio)
        if not self.quirks:
            self._converge_clean(converged)
            return
        if self.n_tolerance < self.n_converge:
            for i in range(self.n_converge - self.n_tolerance):
                s = self.converge_q[1 + i]
                self._add(s, start_step=s.start_step, end_step=s.end_step)
        elif self.n_tolerance > self.n_converge:
            candidates = list(self.smooth_q)[:self.n_tolerance - self.n_converge + 1]
            start = 0
            for i in reversed(range(len(candidates))):
                if candidates[i].end_loss > self.threshold:
                    start = i + 1
                    break
            for s in candidates[start + 1:]:  # quirk b: candidates[start] is skipped
                self._add(s, start_step=s.start_step, end_step=s.end_step)

    def _converge_clean(self, converged: Average) -> None:
        """The valley's start: back from the converged segment to the last loss above tau; every
        segment from there to the converged one and those after it that Qs no longer holds, once."""
        before = [s for s in self.smooth_q if s.end_step <= converged.end_step] or [converged]
        start = 0
        for i in reversed(range(len(before))):
            if before[i].end_loss > self.threshold:
                start = i + 1
                break
        members = before[start:] or [converged]
        oldest_kept = self.smooth_q[0].end_step
        members += [s for s in self.converge_q if converged.end_step < s.end_step < oldest_kept]
        for s in members:
            self._add(s, start_step=s.start_step, end_step=s.end_step)

    def final(self) -> Average:
        """The averaged model (upstream's get_final_model); never converged: the last segment."""
        if not self.is_converged:
            return self.converge_q[-1]
        if not self.dead_valley:
            remaining = list(self.smooth_q)
            if self.quirks:
                remaining = remaining[1:]  # upstream drops the oldest (added at the last evaluation)
            else:
                remaining = [s for s in remaining if s.end_step > self.last_added]
            while remaining:
                if min(s.end_loss for s in remaining) > self.threshold:
                    break
                s = remaining.pop(0)
                self._add(s, step=s.end_step)
            self.smooth_q = deque(remaining)
        return self.final_model

    # -- resume ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything the rule holds; segments shared by both windows are stored once."""
        segments = {id(s): s for s in [*self.converge_q, *self.smooth_q]}
        keys = {k: i for i, k in enumerate(segments)}
        return {"segments": [s.state_dict() for s in segments.values()],
                "converge_q": [keys[id(s)] for s in self.converge_q], "smooth_q": [keys[id(s)] for s in self.smooth_q],
                "final_model": None if self.final_model is None else self.final_model.state_dict(),
                "converge_step": self.converge_step, "threshold": self.threshold, "dead_valley": self.dead_valley,
                "dead_step": self.dead_step, "last_added": self.last_added}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        segments = [Average.from_state(s) for s in state["segments"]]
        self.converge_q = deque(segments[i] for i in state["converge_q"])
        self.smooth_q = deque(segments[i] for i in state["smooth_q"])
        self.final_model = None if state["final_model"] is None else Average.from_state(state["final_model"])
        self.converge_step, self.threshold = state["converge_step"], state["threshold"]
        self.dead_valley, self.dead_step, self.last_added = state["dead_valley"], state["dead_step"], state["last_added"]


class Swad:
    """SWAD around one model for the training loop: `after_step(step)` after each optimiser step
    (0-based), `due(step, last)` says whether the segment ends there, `end_segment(step, loss)`
    then (True when the valley died: stop training), `apply()` at the end puts the averaged
    weights and their buffers into the model."""

    def __init__(self, model: nn.Module, eval_steps: int, valley: LossValley):
        self.model, self.eval_steps, self.valley = model, eval_steps, valley
        self.segment = self._fresh()
        self.trace: list[tuple[int, float]] = []  # (step, validation loss) of each evaluation

    def _params(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]  # frozen ones never change

    def _fresh(self) -> Average:
        return Average.of(self._params(), self.model.buffers())

    def after_step(self, step: int) -> None:
        self.segment.update(self._params(), step=step)

    def due(self, step: int) -> bool:
        """Upstream evaluates at steps 0, f, 2f, ... and its step count ends on one."""
        return step % self.eval_steps == 0

    def last_step(self, total_steps: int) -> int:
        """The last step (0-based) of `total_steps` that ends a segment: training stops there."""
        return (total_steps - 1) // self.eval_steps * self.eval_steps

    def end_segment(self, step: int, loss: float) -> bool:
        self.trace.append((step, loss))
        self.valley.update(self.segment, loss)
        self.segment = self._fresh()
        return self.valley.dead_valley

    @torch.no_grad()
    def apply(self) -> Average:
        final = self.valley.final()
        for p, mean in zip(self._params(), final.params):
            p.copy_(mean)
        for b, kept in zip(self.model.buffers(), final.buffers):
            b.copy_(kept)
        return final

    def summary(self, final: Average) -> dict[str, float]:
        """What the run logs: where the valley was found and what was averaged."""
        v = self.valley
        nan = float("nan")
        return {"swad/converge_step": nan if v.converge_step is None else v.converge_step,
                "swad/threshold": nan if v.threshold is None else v.threshold,
                "swad/dead_step": nan if v.dead_step is None else v.dead_step,
                "swad/start_step": final.start_step, "swad/end_step": final.end_step,
                "swad/segments_averaged": final.n_averaged, "swad/evaluations": len(self.trace)}

    def state_dict(self) -> dict[str, Any]:
        return {"segment": self.segment.state_dict(), "valley": self.valley.state_dict(),
                "trace": [list(t) for t in self.trace]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.segment = Average.from_state(state["segment"])
        self.valley.load_state_dict(state["valley"])
        self.trace = [(int(s), float(loss)) for s, loss in state["trace"]]


@torch.no_grad()
def recompute_bn(model: nn.Module, forward_batches: Iterable[Any], forward) -> None:
    """Upstream's `update_bn`: every BatchNorm's running mean and variance reset to 0 and 1 and
    re-estimated as a cumulative average (momentum None) over `forward_batches`, the model in
    training mode; momenta restored after. `forward(batch)` runs the model on one batch."""
    momenta = {}
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            module.running_mean = torch.zeros_like(module.running_mean)
            module.running_var = torch.ones_like(module.running_var)
            momenta[module] = module.momentum
    if not momenta:
        return
    was_training = model.training
    model.train()
    for module in momenta:
        module.momentum = None
        module.num_batches_tracked *= 0
    for batch in forward_batches:
        forward(batch)
    for module, momentum in momenta.items():
        module.momentum = momentum
    model.train(was_training)


def valley_figure(trace: list[tuple[int, float]], valley: LossValley, final: Average):
    """The validation loss at each segment's end, the threshold and the averaged window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if trace:
        steps, losses = zip(*trace)
        ax.plot(steps, losses, marker=".", label="source validation loss (online model)")
    if valley.threshold is not None:
        ax.axhline(valley.threshold, color="grey", linestyle="--", label="tolerance threshold")
        ax.axvline(valley.converge_step, color="green", linestyle=":", label="converged")
    if final.start_step >= 0:
        ax.axvspan(final.start_step, final.end_step, color="orange", alpha=0.2,
                   label=f"averaged ({final.n_averaged} segment averages)")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("cross-entropy")
    ax.set_title("SWAD: loss valley")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def batch_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def validation_loss(method: Any, validation: Any) -> float:
    """Mean cross-entropy of the model's probabilities on the validation split (SWAD's signal)."""
    from sklearn.metrics import log_loss

    probs = method.predict(validation)
    return float(log_loss(validation.labels, probs, labels=list(range(probs.shape[1]))))


@register_extension
class SwadExtension(TrainingExtension):
    """SWAD around the loop: segments after every step, the valley on the source's validation loss,
    the averaged model put in place at the end."""

    name = "swad"
    fuses = False  # one model's weights averaged, its validation loss read on the host
    order = 20

    @dataclass(frozen=True)
    class Options:
        swad: bool = False
        swad_eval_steps: int = 100
        swad_n_converge: int = 3
        swad_n_tolerance: int = 6
        swad_tolerance_ratio: float = 0.3
        swad_bn: str = "freeze"  # "freeze" (upstream's freeze_bn) or "recompute" (update_bn after averaging)
        swad_bn_batches: int = 500  # "recompute": training batches the statistics are re-estimated on
        swad_quirks: bool = True

    @classmethod
    def validate(cls, recipe: Any) -> None:
        check(min(recipe.swad_eval_steps, recipe.swad_n_converge, recipe.swad_n_tolerance) >= 1,
              f"recipe.swad_eval_steps = {recipe.swad_eval_steps}, swad_n_converge = {recipe.swad_n_converge}, "
              f"swad_n_tolerance = {recipe.swad_n_tolerance}: each must be 1 or more")
        check(recipe.swad_tolerance_ratio >= 0, f"recipe.swad_tolerance_ratio = {recipe.swad_tolerance_ratio}; must be 0 or more")
        check(recipe.swad_bn in BN_MODES, f"recipe.swad_bn = {recipe.swad_bn!r}; expected one of {', '.join(BN_MODES)}")
        check(recipe.swad_bn_batches >= 1, f"recipe.swad_bn_batches = {recipe.swad_bn_batches}; must be 1 or more")

    @classmethod
    def is_active(cls, recipe: Any) -> bool:
        return recipe.swad

    @classmethod
    def identity(cls, recipe: Any) -> dict[str, Any]:
        """Its changed options, and while on, always its BatchNorm mode: SWAD jobs hashed before
        BatchNorm and the last segment followed upstream computed something else."""
        out = super().identity(recipe)
        if recipe.swad:
            out["swad_bn"] = recipe.swad_bn
        return out

    @classmethod
    def label(cls, values: Mapping[str, Any]) -> str:
        return "" if is_off(values.get("swad", "")) else "swad"

    @classmethod
    def refuse(cls, recipe: Any, job: Any) -> str | None:
        if not job.has_validation:
            return (f"{job.method} has no validation split to find SWAD's loss valley on; set recipe.val_fraction "
                    "(e.g. 0.2, upstream's hold-out)")
        return None

    def setup(self, loop: Any) -> None:
        if loop.validation is None:
            raise self.refused(loop)
        r = self.recipe
        self.swad = Swad(loop.model, r.swad_eval_steps, LossValley(r.swad_n_converge, r.swad_n_tolerance,
                                                                   r.swad_tolerance_ratio, r.swad_quirks))
        self.last = self.swad.last_step(loop.total_steps)

    def refused(self, loop: Any) -> Exception:
        from ...core.errors import BenchmarkError

        return BenchmarkError(f"{loop.method.name}: recipe.swad finds its averaging window on the source's validation "
                              "split, and this job has none: set recipe.val_fraction (e.g. 0.2, upstream's hold-out)")

    def _freeze(self, loop: Any) -> None:
        if self.recipe.swad_bn == "freeze":
            for module in batch_norms(loop.model):
                module.eval()

    def epoch_start(self, loop: Any) -> None:
        self._freeze(loop)

    def after_step(self, loop: Any, batch: Any, losses: Any, parts: Any) -> None:
        step = loop.step - 1  # the 0-based index of the step just taken
        self.swad.after_step(step)
        if self.swad.due(step):
            dead = self.swad.end_segment(step, validation_loss(loop.method, loop.validation))
            self._freeze(loop)  # evaluating put the model back in training mode
            loop.stop = loop.stop or dead or step >= self.last

    def finish(self, loop: Any) -> dict[str, float]:
        final = self.swad.apply()
        if self.recipe.swad_bn == "recompute":
            recompute_bn(self.swad.model, loop.fresh_batches(self.recipe.swad_bn_batches), loop.step_loss)
        loop.log.figure("swad_valley.png", valley_figure(self.swad.trace, self.swad.valley, final))
        return self.swad.summary(final)

    def state_dict(self) -> dict[str, Any]:
        return self.swad.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.swad.load_state_dict(state)
