"""What a method plugin imports, and all it should: the method contract, the shared training
loop's base class and the few helpers the built-in methods use. These names stay here when the
rest of `benchmark` moves; docs/adding-a-method.md walks through a plugin that uses them.

    from benchmark.api import BaseHparams, Batch, TrainedMethod, register_method
"""

from .core.errors import BenchmarkError
from .core.labels import CLASSES, NUM_CLASSES
from .models.clip_text import (CLASS_NAMES, TEMPLATES, NotApplicable, require_clip_encoder, tokenizer,
                               zero_shot_weights)
from .training.augment import AugmentSpec, augment, normalize
from .training.clip_input import CLIP_MEAN, CLIP_POLICY, CLIP_STD, random_resized_crop, to_clip_input, tower_size
from .training.evaluator import in_domain_and_unseen
from .training.numerics import Numerics, to_device_batch

Execution = Numerics  # its name until 2026-12-08 (a plugin may import it)
from .training.method import (BaseHparams, Batch, Components, Method, OptimizerSettings, Relabel, RunLog, check_range,
                              register_method)
from .training.trained_method import ONE_OF_FLIP_NOISE, EncoderHparams, TrainedMethod, check_clip_features

__all__ = [
    # the contract and its registration
    "Method", "BaseHparams", "Components", "RunLog", "register_method", "check_range",
    # methods trained by the shared loop
    "TrainedMethod", "EncoderHparams", "Batch", "Relabel", "OptimizerSettings", "check_clip_features",
    # helpers
    "AugmentSpec", "ONE_OF_FLIP_NOISE", "augment", "normalize", "Numerics", "to_device_batch", "BenchmarkError",
    "CLASSES", "NUM_CLASSES", "in_domain_and_unseen",
    # CLIP's text tower and input policy, for the methods that adapt CLIP
    "CLASS_NAMES", "TEMPLATES", "NotApplicable", "require_clip_encoder", "tokenizer", "zero_shot_weights",
    "CLIP_MEAN", "CLIP_STD", "CLIP_POLICY", "random_resized_crop", "to_clip_input", "tower_size",
]
