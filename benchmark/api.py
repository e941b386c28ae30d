"""What a method plugin imports, and all it should: the method contract, the shared training
loop's base class and the few helpers the built-in methods use. These names stay here when the
rest of `benchmark` moves; docs/adding-a-method.md walks through a plugin that uses them.

    from benchmark.api import BaseHparams, Batch, TrainedMethod, register_method
"""

from .core.errors import BenchmarkError
from .core.labels import CLASSES, NUM_CLASSES
from .training.augment import AugmentSpec, normalize
from .training.execution import Execution
from .training.method import (BaseHparams, Batch, Components, Method, OptimizerSettings, Relabel, RunLog, check_range,
                              register_method)
from .training.trained_method import ONE_OF_FLIP_NOISE, EncoderHparams, TrainedMethod, check_clip_features

__all__ = [
    # the contract and its registration
    "Method", "BaseHparams", "Components", "RunLog", "register_method", "check_range",
    # methods trained by the shared loop
    "TrainedMethod", "EncoderHparams", "Batch", "Relabel", "OptimizerSettings", "check_clip_features",
    # helpers
    "AugmentSpec", "ONE_OF_FLIP_NOISE", "normalize", "Execution", "BenchmarkError", "CLASSES", "NUM_CLASSES",
]
