"""Finding the methods: the `benchmark.methods` entry points loaded into the registry
(`load_plugins`, `build_method`), and their names and descriptions read without importing a
method, so without torch (`method_index`).

`benchmark methods` only lists names and descriptions, which every plugin writes as literal
strings in its `@register_method("name", "description", ...)` decorators. This reads them from the
source of each `benchmark.methods` entry point's module (every `.py` file of a package) with
`ast`, which takes milliseconds where importing the methods takes seconds. A plugin whose
decorators are not plain literals, or whose source cannot be found (a compiled module, an entry
point naming a callable), is imported the usual way instead, so the list is never incomplete.
"""

from __future__ import annotations

import ast
import importlib.util
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import BenchmarkError

if TYPE_CHECKING:  # the contract imports torch; `benchmark methods` must not
    from ..core.registry import Registry
    from .method import Components, Method, MethodEntry

ENTRY_POINT_GROUP = "benchmark.methods"
DECORATOR = "register_method"


class _NotLiteral(Exception):
    """A `register_method(...)` call whose name or description is not a literal string."""


def _module_files(module: str) -> list[Path] | None:
    """The source files of `module` (all of a package's), or None when they cannot be found."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return sorted(p for folder in spec.submodule_search_locations for p in Path(folder).rglob("*.py"))
    if spec.origin and spec.origin.endswith(".py"):
        return [Path(spec.origin)]
    return None


def _registrations(path: Path) -> list[tuple[str, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name != DECORATOR:
            continue
        args = node.args[:2]
        if len(args) < 2 or not all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
            raise _NotLiteral(f"{path}:{node.lineno}")
        found.append((args[0].value, args[1].value))
    return found


def method_index() -> list[tuple[str, str]]:
    """(name, description) of every registered method, sorted by name, as `load_plugins` would
    register them."""
    rows: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        module, _, attr = ep.value.partition(":")
        files = None if attr else _module_files(module.strip())
        try:
            found = [r for path in files for r in _registrations(path)] if files else None
        except (_NotLiteral, SyntaxError, OSError):
            found = None
        if not found:  # not readable from source: import it (loads every plugin once)
            methods = load_plugins()
            return [(name, methods.get(name).description) for name in methods.names()]
        rows.update(found)
    if not rows:
        load_plugins()  # raises the error that names the missing entry point
    return sorted(rows.items())


_plugins_loaded = False


def load_plugins() -> Registry[MethodEntry]:
    """Load every `benchmark.methods` entry point once (the built-ins among them); the registry."""
    global _plugins_loaded
    from .method import METHODS

    if not _plugins_loaded:
        _plugins_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()
    if not len(METHODS):
        raise BenchmarkError(f"no methods registered: no package declares the `{ENTRY_POINT_GROUP}` entry point "
                             "(install this project: pip install -e .)")
    return METHODS


def method_entry(name: str) -> MethodEntry:
    return load_plugins().get(name)


def build_method(name: str, overrides: dict[str, Any] | None = None,
                 components: Components | None = None) -> Method:
    from .method import Components

    entry = method_entry(name)
    return entry.cls(entry.hparams(overrides), components or Components(), name=name)
