"""Training extensions: what a method wears in the shared loop, one file each, registered with
`@register_extension` (benchmark.training.extensions.base states the contract).

Every module of this package is an extension; outside packages add theirs through the
`benchmark.extensions` entry-point group. `load_extensions()` imports them all (the loop's and
the plan's business, with torch). `option_index()` reads their options (`class Options`: names,
types, literal defaults) from the source with `ast`, without importing anything, so that the
Recipe can be assembled and a protocol read (`benchmark table`) without torch. Extensions never
import each other.
"""

from __future__ import annotations

import ast
import functools
import importlib
import pkgutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .base import EXTENSIONS, JobFacts, TrainingExtension, is_off, ordered, register_extension

ENTRY_POINT_GROUP = "benchmark.extensions"
DECORATOR = "register_extension"


@dataclass(frozen=True)
class OptionsEntry:
    """One extension's options as its source declares them."""

    name: str  # the extension's name
    module: str
    fields: tuple[tuple[str, str, Any], ...]  # (field, annotation, default)
    description: str = ""  # the first sentence of its module's docstring


def _modules() -> list[str]:
    return [f"{__name__}.{info.name}" for info in pkgutil.iter_modules(__path__) if info.name != "base"]


@functools.cache
def load_extensions() -> None:
    """Import every extension (each registers itself in EXTENSIONS)."""
    for module in _modules():
        importlib.import_module(module)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


class _NotLiteral(Exception):
    pass


def _first_line(doc: str | None) -> str:
    """The docstring's first sentence, on one line."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    sentence = paragraph.split(". ")[0]
    return sentence.rstrip(".:") + "."


def _read(path: Path, module: str) -> list[OptionsEntry]:
    out = []
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and any(isinstance(d, ast.Name) and d.id == DECORATOR
                                                        for d in node.decorator_list)):
            continue
        name, fields = None, ()
        for item in node.body:
            if (isinstance(item, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "name" for t in item.targets)):
                name = ast.literal_eval(item.value)
            if isinstance(item, ast.ClassDef) and item.name == "Options":
                try:
                    fields = tuple((f.target.id, ast.unparse(f.annotation), ast.literal_eval(f.value))
                                   for f in item.body if isinstance(f, ast.AnnAssign))
                except (ValueError, AttributeError) as exc:
                    raise _NotLiteral(f"{path}: {exc}") from exc
        if not isinstance(name, str):
            raise _NotLiteral(f"{path}: an extension's name is not a literal")
        out.append(OptionsEntry(name, module, fields, _first_line(ast.get_docstring(tree))))
    return out


@functools.cache
def option_index() -> tuple[OptionsEntry, ...]:
    """Every extension's options, read from its source (imported instead when a default is not a
    literal, or for an outside package's extension), in module order."""
    out: list[OptionsEntry] = []
    for module in _modules():
        path = Path(__path__[0]) / f"{module.rsplit('.', 1)[1]}.py"
        try:
            out += _read(path, module)
        except _NotLiteral:
            out += _imported(module)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        out += _imported(entry.module, entry)
    return tuple(out)


def _imported(module: str, entry: Any = None) -> list[OptionsEntry]:
    loaded = entry.load() if entry is not None else importlib.import_module(module)
    module = getattr(loaded, "__name__", module) if entry is None else entry.module
    import sys

    return [OptionsEntry(cls.name, module, tuple((f.name, str(f.type), f.default) for f in cls.option_fields()),
                         _first_line(sys.modules[cls.__module__].__doc__))
            for cls in ordered() if cls.__module__ == module]


def extension_class(name: str) -> type[TrainingExtension]:
    load_extensions()
    return EXTENSIONS.get(name)


__all__ = ["EXTENSIONS", "JobFacts", "OptionsEntry", "TrainingExtension", "extension_class", "is_off",
           "load_extensions", "option_index", "ordered", "register_extension"]
