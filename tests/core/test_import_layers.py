"""The core's layers, read from its import statements (tests/import_graph.py): no import cycle in
``ganpo_plugins`` or the adapters, and every import points down the layers (docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from import_graph import find_cycle, import_graph, modules_under

REPO = Path(__file__).resolve().parents[2]
ROOTS = {
    "ganpo_plugins": REPO / "ganpo_plugins",
    "ganpo_trl": REPO / "adapters/trl/ganpo_trl",
    "ganpo_axolotl": REPO / "adapters/axolotl/ganpo_axolotl",
    "ganpo_openrlhf": REPO / "adapters/openrlhf/ganpo_openrlhf",
}
# Bottom to top; a module may import its own layer and those below. The package's faces
# (``ganpo_plugins/__init__.py`` and the documented ``python -m`` modules) sit above the tools.
LAYERS = {
    "ganpo_plugins._moved": 0,
    "ganpo_plugins.config": 0,
    "ganpo_plugins.formulas": 1,
    "ganpo_plugins.regularizers": 2,
    "ganpo_plugins.plugins": 3,
    "ganpo_plugins.adapter_kit": 4,
    "ganpo_plugins.apo": 4,
    "ganpo_plugins.tools": 5,
    "ganpo_plugins": 6,
    "ganpo_trl": 7,
    "ganpo_axolotl": 7,
    "ganpo_openrlhf": 7,
}


def _layer(module: str) -> tuple[str, int]:
    """The layer a module belongs to: the longest prefix in :data:`LAYERS`."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return prefix, LAYERS[prefix]
    raise AssertionError(f"{module} belongs to no layer; add its subpackage to LAYERS")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(modules_under(ROOTS))


def test_the_graph_sees_the_imports_it_should(graph: dict[str, set[str]]) -> None:
    """The reader follows relative, function-level and face-table imports (else the checks below
    would pass on an empty graph)."""
    assert "ganpo_plugins.plugins.registry" in graph["ganpo_plugins.plugins.parse"]  # from . import registry
    assert "ganpo_plugins.plugins.builtin" in graph["ganpo_plugins.plugins.registry"]  # inside a function
    assert "ganpo_trl.attach" in graph["ganpo_trl.entry_point"]  # inside a function
    assert "ganpo_plugins.adapter_kit.hf_trainer" in graph["ganpo_plugins.adapter_kit"]  # the face's table
    assert "ganpo_plugins.adapter_kit" in graph["ganpo_trl.attach"]  # absolute, to a package
    assert len(graph) > 50


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_point_down_the_layers(graph: dict[str, set[str]]) -> None:
    upward = []
    for module, targets in graph.items():
        layer, rank = _layer(module)
        for target in sorted(targets):
            target_layer, target_rank = _layer(target)
            if target_rank > rank:
                upward.append(f"{module} ({layer}) imports {target} ({target_layer})")
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_the_cycle_check_fails_on_a_planted_cycle(tmp_path: Path) -> None:
    """A package whose ``low`` imports ``high`` inside a function, and ``high`` imports ``low``."""
    package = tmp_path / "planted"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from .high import g\n    return g\n")
    (package / "high.py").write_text("from . import low\n\n\ndef g():\n    return low\n")
    planted = import_graph(modules_under({"planted": package}))
    assert find_cycle(planted) == ["planted.high", "planted.low", "planted.high"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
