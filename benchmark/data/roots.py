"""Where each dataset lives: --root, --dataset-path NAME=DIR, or --data-root/<default folder>."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import BenchmarkError
from ..core.paths import data_root as env_data_root
from .base import DATASETS


def parse_assignments(items: list[str] | None, flag: str) -> dict[str, str]:
    """`["a=1", "b=2"]` -> {"a": "1", "b": "2"}; a malformed item names the flag."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BenchmarkError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def dataset_root(name: str, *, root: str | Path | None = None, data_root: str | Path | None = None,
                 dataset_paths: dict[str, str] | None = None) -> Path | None:
    reader = DATASETS.get(name)
    if root is not None:
        return Path(root)
    if dataset_paths and name in dataset_paths:
        return Path(dataset_paths[name])
    if not reader.default_folder:
        if name.startswith("synth5/"):
            return None  # generated, no folder needed
        raise BenchmarkError(f"{name} has no default folder; give its folder with --root DIR "
                             f"or --dataset-path {name}=DIR")
    base = Path(data_root) if data_root is not None else env_data_root()
    if base is None:
        raise BenchmarkError(f"where is {name}? give --root DIR, --data-root DIR (holding {reader.default_folder}/) "
                             "or set FER_DATA_ROOT")
    return base / reader.default_folder
