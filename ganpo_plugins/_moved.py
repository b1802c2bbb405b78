"""The module paths of 0.1, kept working for a release with a ``DeprecationWarning``.

0.2.0 put the modules in layer subpackages (CHANGELOG.md has the map). ``import
ganpo_plugins.hookspecs`` (a third-party plugin's) still works: this finder answers for each old
path with the module now holding its names (or, where one module was split, a module that looks
them up in each part), and warns once naming the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["MOVED", "install"]

#: old module (under ganpo_plugins) → the modules that hold its names now, searched in order.
MOVED: dict[str, tuple[str, ...]] = {
    "functional": ("formulas.functional",),
    "preference": ("formulas.preference",),
    "discriminators": ("formulas.discriminators",),
    "logprobs": ("formulas.logprobs",),
    "protocol": ("regularizers.protocol",),
    "distributed": ("regularizers.distributed",),
    "learned": ("regularizers.learned",),
    "ganpo": ("regularizers.ganpo",),
    "ganpo_config": ("regularizers.ganpo_config",),
    "mmd": ("regularizers.mmd",),
    "hookspecs": ("plugins.hookspecs",),
    "registry": ("plugins.registry",),
    "builtin": ("plugins.builtin",),
    "taps": ("adapter_kit.taps",),
    "runner": ("adapter_kit.runner", "adapter_kit.checkpoint", "plugins.build"),
    "attachment": ("adapter_kit.attachment",),
    "hf_trainer": ("adapter_kit.hf_trainer",),
    "host_rules": ("adapter_kit.rules",),
    "hosts": ("adapter_kit.versions", "plugins.dispatch", "tools.doctor"),
    "cli": ("adapter_kit.launch",),
    "flags": ("adapter_kit.flags",),
    "report": ("adapter_kit.announce",),
}
_PACKAGE = "ganpo_plugins"


class _SplitModule(types.ModuleType):
    """An old module whose names now live in several modules: each looked up in turn."""

    def __init__(self, name: str, targets: Sequence[str]) -> None:
        super().__init__(name, f"Moved in 0.2.0 to {', '.join(targets)}.")
        self._targets = tuple(targets)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self._targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(
            f"module {self.__name__!r} has no attribute {attr!r} (moved to {', '.join(self._targets)})"
        )


class _MovedLoader(importlib.abc.Loader):
    def __init__(self, targets: Sequence[str]) -> None:
        self.targets = targets

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__name__
        warnings.warn(
            f"{name} moved to {' / '.join(self.targets)} in ganpo-plugins 0.2.0; the old path will be removed in a "
            "later release",
            DeprecationWarning,
            stacklevel=2,
        )
        # What the import returns is whatever sys.modules holds for the name when the loader ends.
        if len(self.targets) == 1:
            sys.modules[name] = importlib.import_module(self.targets[0])
        else:
            sys.modules[name] = _SplitModule(name, self.targets)


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        package, _, old = fullname.rpartition(".")
        if package != _PACKAGE or old not in MOVED:
            return None
        targets = [f"{_PACKAGE}.{t}" for t in MOVED[old]]
        return importlib.machinery.ModuleSpec(fullname, _MovedLoader(targets))


def install() -> None:
    """Answer the old paths (once per process)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
