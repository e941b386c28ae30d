"""The shipped protocol files, found and listed without importing torch (`benchmark protocols`
starts in well under a second; benchmark.jobs.protocol loads and validates one)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


def protocol_dir() -> Path:
    """The shipped protocol files: the repository's protocols/ folder, installed as the
    package benchmark.protocols (so an installed wheel finds them too)."""
    from importlib.resources import files

    return Path(str(files("benchmark.protocols")))


def protocol_rows() -> list[list[Any]]:
    """name, methods, sources, targets, seeds, epochs, description of each shipped protocol, read
    straight from its TOML (no validation, so no method is imported: `benchmark protocols` is fast;
    `run` validates)."""
    rows = []
    for path in sorted(protocol_dir().glob("*.toml")):
        data = tomllib.loads(path.read_text())
        datasets = data.get("datasets", [])
        rows.append([data.get("name", path.stem), ",".join(data.get("methods", ["cafe"])),
                     len(data.get("sources", datasets)), len(datasets), ",".join(map(str, data.get("seeds", [3407]))),
                     data.get("recipe", {}).get("epochs", 60), data.get("description", "")])
    return rows
