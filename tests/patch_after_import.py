"""The import hook of the test-only CPU shims (tests/*/cpu_*shim*/sitecustomize.py): runs a patch right
after a named module has been executed, so starting Python imports nothing (DeepSpeed's CPU op
builder, for one, starts Python subprocesses to probe the CPU). A shim appends the tests folder to
the end of ``sys.path`` (below everything installed, so it shadows nothing) and calls :func:`install`."""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Callable, Mapping
from typing import Any


class PatchAfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, patches: Mapping[str, Callable[[Any], None]]) -> None:
        self.patches = dict(patches)

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        patch = self.patches.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                exec_module = spec.loader.exec_module

                def exec_and_patch(module: Any, exec_module: Any = exec_module) -> None:
                    exec_module(module)
                    patch(module)

                spec.loader.exec_module = exec_and_patch
                return spec
        return None


def install(patches: Mapping[str, Callable[[Any], None]]) -> None:
    """Patch each named module (``{"pkg.module": patch(module)}``) right after its first import."""
    sys.meta_path.insert(0, PatchAfterImport(patches))
