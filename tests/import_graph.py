"""The static import graph of a set of packages, read with ``ast`` (nothing is imported).

An edge is every ``import`` / ``from ... import`` statement anywhere in a module (module level,
inside functions, under ``TYPE_CHECKING``), resolved to a module of the graph: ``from pkg import
name`` points at ``pkg.name`` when that is a module, else at ``pkg``. A package face that loads
its names lazily from a table (``_EXPORTS = {"Name": "sub.module"}``, values relative to
``ganpo_plugins``) points at each module of its table. Not followed: ``importlib.import_module``
of a computed name (the deprecation shims of old module paths use it, and nothing else does).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["find_cycle", "import_graph", "modules_under"]


def modules_under(roots: Mapping[str, Path]) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file of each package ``{name: folder}``."""
    found = {}
    for package, folder in roots.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _is_package(name: str, modules: Mapping[str, Path]) -> bool:
    return name in modules and modules[name].name == "__init__.py"


def _targets(name: str, tree: ast.Module, modules: Mapping[str, Path]) -> set[str]:
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    out: set[str] = set()

    def add(candidate: str) -> None:
        # ``import a.b.c`` runs a, a.b and a.b.c; the deepest one inside the graph is the edge.
        while candidate and candidate not in modules:
            candidate = candidate.rpartition(".")[0]
        if candidate:
            out.add(candidate)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                add(sub if sub in modules else source)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            if isinstance(node.value, ast.Dict):
                for value in node.value.values:
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        add(f"ganpo_plugins.{value.value}")
    out.discard(name)
    return out


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """``{module: modules it imports}``, both inside ``modules``."""
    return {name: _targets(name, ast.parse(path.read_text(), str(path)), modules) for name, path in modules.items()}


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or ``None`` when the graph has none."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack = [(start, iter(sorted(graph[start])))]
        path.append(start)
        on_path.add(start)
        while stack:
            node, edges = stack[-1]
            for nxt in edges:
                if nxt in on_path:
                    return [*path[path.index(nxt) :], nxt]
                if nxt not in done:
                    stack.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    path.append(nxt)
                    on_path.add(nxt)
                    break
            else:
                stack.pop()
                done.add(path.pop())
                on_path.discard(node)
    return None
