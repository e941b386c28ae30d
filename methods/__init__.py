"""Method plugins: one file per method, each registered behind the same fit/predict interface.

Importing this package registers the built-in methods in `METHODS`.
"""

from . import cafe, clip_ft, clip_probe, clip_zeroshot, eac, erm, rul, scn  # noqa: F401  (registration)
from .base import METHODS, Components, MemoryLog, Method, TrainedMethod, build_method, load_plugins, register_method

__all__ = ["METHODS", "Components", "MemoryLog", "Method", "TrainedMethod", "build_method", "load_plugins",
           "register_method"]
