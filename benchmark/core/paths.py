"""Where the harness keeps its outputs: one place, overridable by environment variables."""

from __future__ import annotations

import os
from pathlib import Path


def results_dir() -> Path:
    """`results/` of the current directory, or $BENCHMARK_RESULTS."""
    return Path(os.environ.get("BENCHMARK_RESULTS", "results"))


def cache_dir() -> Path:
    """Decoded images, synth5 and feature caches: $BENCHMARK_CACHE or results/cache."""
    env = os.environ.get("BENCHMARK_CACHE")
    return Path(env) if env else results_dir() / "cache"


def data_root() -> Path | None:
    """The folder holding one sub-folder per dataset ($FER_DATA_ROOT), if set."""
    env = os.environ.get("FER_DATA_ROOT")
    return Path(env) if env else None
