"""The training-extension contract: what the shared loop calls, and what an extension owns.

An extension is one thing a method can wear in the shared loop (SAM, SWAD, MixStyle, the
fine-tuning options, the progress bar, epoch checkpoints...). It lives in one file of this
package, registered with `@register_extension`, and owns, besides its hooks:

    Options        a frozen dataclass of its recipe fields (`recipe.sam_rho`, `--set recipe.sam_rho=0.05`);
                   the Recipe is assembled from the loop's own fields and every extension's Options
    validate       the checks of those options, each error naming `recipe.<field>`
    identity       which of its options enter a job's hash, and when (by default: those set away
                   from their default, so that jobs hashed before the extension existed keep their hash)
    execution_only options that never change a number (left out of the hash)
    label          its part of a row's name ("swad" in "erm+swad"), "" when it names no recipe
    fuses          whether jobs wearing it may train as one fused group (`run --fuse`)
    refuse         why a job cannot wear it, checked before any job trains (the backbone, the method)
    state_dict     what a stopped job needs to go on (collected into the resume state by name)

The loop (benchmark.training.trainer) builds the extensions a recipe turns on, in registration
order (`order`), and calls each hook of each in turn; it never names one. A hook gets the `Loop`:
the training state of the jobs being trained (one job, or a fused group).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from ...core.errors import BenchmarkError
from ...core.registry import Registry

# The hooks' annotations name the loop's types as strings only (Loop, Batch, OptimizerSettings,
# torch.Tensor): the loop imports this package, never the other way round.


@dataclass(frozen=True)
class JobFacts:
    """What an extension may refuse a job for, known before any job trains (benchmark.jobs.plan)."""

    method: str
    backbone_id: str
    backbone_family: str  # the family its name picks (benchmark.models.backbones)
    # What the family offers, as far as its name tells: CNN feature maps between stages (None:
    # only the built model knows), activation checkpointing.
    backbone_feature_maps: bool | None
    backbone_grad_checkpointing: bool
    trained_by_loop: bool  # False: the method trains itself (zero-shot, a scikit-learn probe)
    training_logits: bool  # the method reports its training logits (`batch.outputs["logits"]`)
    has_validation: bool  # the source has a validation split (its own or held out)


class TrainingExtension:
    """Base of every extension; every hook does nothing unless overridden."""

    name: ClassVar[str] = ""
    Options: ClassVar[type | None] = None
    execution_only: ClassVar[tuple[str, ...]] = ()
    fuses: ClassVar[bool] = True
    # Where its hooks run among the others' (lower first); equal orders run in name order.
    order: ClassVar[int] = 50

    def __init__(self, recipe: Any):
        self.recipe = recipe

    # -- what it owns of the recipe -------------------------------------------------------------
    @classmethod
    def option_fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls.Options)) if cls.Options is not None else []

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in cls.option_fields()}

    @classmethod
    def is_active(cls, recipe: Any) -> bool:
        """Whether the loop wears it for `recipe`: by default, when an option that changes numbers
        is set away from its default."""
        return any(getattr(recipe, k) != v for k, v in cls.defaults().items() if k not in cls.execution_only)

    @classmethod
    def validate(cls, recipe: Any) -> None:
        """Raise a BenchmarkError naming `recipe.<field>` for a bad option value."""

    @classmethod
    def identity(cls, recipe: Any) -> dict[str, Any]:
        """Its options in a job's identity: those set away from their default (so a job that does
        not wear it hashes as before it existed), never the numerics-only ones."""
        defaults = cls.defaults()
        return {k: getattr(recipe, k) for k in defaults
                if k not in cls.execution_only and getattr(recipe, k) != defaults[k]}

    @classmethod
    def label(cls, values: Mapping[str, Any]) -> str:
        """Its part of a row's name for the recipe `values` (a Recipe's fields, or a run's logged
        `recipe.*` params as strings); "" for none."""
        return ""

    @classmethod
    def refuse(cls, recipe: Any, job: JobFacts) -> str | None:
        """Why a job cannot wear this extension (its recipe turns it on), or None."""
        return None

    # -- hooks, in the order the loop calls them --------------------------------------------------
    def setup(self, loop: Loop) -> None:
        """After the models are built, before the optimiser (insert modules, wrap the model)."""

    def optimizer_settings(self, loop: Loop, settings: OptimizerSettings) -> OptimizerSettings:
        """The method's optimiser settings, changed (AdamW, a per-step schedule, clipping)."""
        return settings

    def param_groups(self, loop: Loop, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The optimiser's parameter groups, changed (split by backbone or weight decay)."""
        return groups

    def start(self, loop: Loop) -> None:
        """Once the optimiser exists and any saved state is loaded, before the first step."""

    def epoch_start(self, loop: Loop) -> None:
        """After the models are put in training mode, before the epoch's first batch."""

    def transform_batch(self, loop: Loop, batch: Batch) -> Batch:
        """The batch a step trains on (random convolution of the images)."""
        return batch

    def loss(self, loop: Loop, batch: Batch, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The step's loss with a term added (its value may go into `parts`, which are logged)."""
        return loss

    def after_backward(self, loop: Loop, batch: Batch) -> None:
        """After the step's backward pass, before the optimiser steps (SAM's second pass, clipping)."""

    def after_step(self, loop: Loop, batch: Batch | None, losses: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        """After the optimiser step; `loop.stop = True` ends training after this step."""

    def epoch_metrics(self, loop: Loop) -> dict[str, float]:
        """Metrics to log for the epoch just ended (before any evaluation)."""
        return {}

    def after_epoch(self, loop: Loop) -> None:
        """After the epoch is logged and evaluated (write a checkpoint)."""

    def finish(self, loop: Loop) -> dict[str, float]:
        """After the last step: put the model to evaluate in place (SWAD's average); metrics to log."""
        return {}

    def close(self, loop: Loop) -> None:
        """Always, when training ends or fails (close a progress bar)."""

    # -- resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
        """What a stopped job needs of this extension to go on bit for bit (None: nothing)."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


EXTENSIONS: Registry[type[TrainingExtension]] = Registry("training extension")


def register_extension(cls: type[TrainingExtension]) -> type[TrainingExtension]:
    """Class decorator: `@register_extension` on a TrainingExtension subclass with a `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a training extension needs a name")
    EXTENSIONS.add(cls.name, cls)
    return cls


def ordered() -> list[type[TrainingExtension]]:
    return sorted((EXTENSIONS.get(n) for n in EXTENSIONS.names()), key=lambda c: (c.order, c.name))


def is_off(value: Any) -> bool:
    """Whether a logged param string (or a value) reads as off: "", 0, false, none."""
    return str(value).strip().lower() in ("", "0", "0.0", "false", "none")


def check(ok: bool, message: str) -> None:
    if not ok:
        raise BenchmarkError(message)

