"""Finding the methods: the `benchmark.methods` entry points loaded into the registry
(`load_plugins`, `build_method`), and their names and descriptions read without importing a
method, so without torch (`method_index`).

`benchmark methods` only lists names, descriptions and whether a method's jobs fuse, which every
plugin writes as literals: `@register_method("name", "description", ...)` on a class whose body
says `fuses = True` (or not). This reads them from the
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


# Classes a method may derive from without inheriting `fuses = True` (both declare False).
_BASES_THAT_DO_NOT_FUSE = {"TrainedMethod", "Method"}


def _flag(cls: ast.ClassDef, path: Path, flag: str = "fuses") -> bool:
    """A boolean class flag (`fuses`, `needs_encoder`, `needs_text_tower`): a literal in its body,
    else False when it derives only from the contract's bases; anything else (inherited from
    another class) is read by importing."""
    for node in cls.body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == flag for t in node.targets)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, bool)):
            return node.value.value
    bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in cls.bases}
    if bases <= _BASES_THAT_DO_NOT_FUSE:
        return False
    raise _NotLiteral(f"{path}:{cls.lineno}")


def _registrations(path: Path) -> list[tuple[str, str, bool, str]]:
    """(name, description, fuses, needs) of each `@register_method(...)` decorator in the file."""
    found, decorating = [], {}
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for decorator in node.decorator_list:
                decorating[id(decorator)] = node
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name != DECORATOR:
            continue
        args = node.args[:2]
        if len(args) < 2 or not all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
            raise _NotLiteral(f"{path}:{node.lineno}")
        if id(node) not in decorating:  # registered by a call, not as a class decorator
            raise _NotLiteral(f"{path}:{node.lineno}")
        cls = decorating[id(node)]
        found.append((args[0].value, args[1].value, _flag(cls, path),
                      needs(_flag(cls, path, "needs_encoder"), _flag(cls, path, "needs_text_tower"))))
    return found


def needs(encoder: bool, text_tower: bool) -> str:
    """What a method needs beyond the protocol's backbone, as `benchmark methods` says it."""
    return "CLIP with its text tower" if text_tower else "a frozen encoder" if encoder else "-"


def method_index() -> list[tuple[str, str, str, str]]:
    """(name, "yes"/"no" whether its jobs fuse, what it needs, description) of every registered
    method, sorted by name, as `load_plugins` would register them."""
    rows: dict[str, tuple[str, str]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        module, _, attr = ep.value.partition(":")
        files = None if attr else _module_files(module.strip())
        try:
            found = [r for path in files for r in _registrations(path)] if files else None
        except (_NotLiteral, SyntaxError, OSError):
            found = None
        if not found:  # not readable from source: import it (loads every plugin once)
            methods = load_plugins()
            return [(name, _yes(methods.get(name).cls.fuses),
                     needs(methods.get(name).cls.needs_encoder, methods.get(name).cls.needs_text_tower),
                     methods.get(name).description) for name in methods.names()]
        rows.update({name: (_yes(fuses), need, description) for name, description, fuses, need in found})
    if not rows:
        load_plugins()  # raises the error that names the missing entry point
    return [(name, fuses, need, description) for name, (fuses, need, description) in sorted(rows.items())]


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


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
