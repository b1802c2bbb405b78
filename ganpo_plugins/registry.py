"""The plugin manager: built-ins plus entry points of the group ``ganpo_plugins``, loaded by name.

An entry point is imported only when a config names it (never at start-up), so installing a
package cannot run its code in a training job that does not ask for it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Literal

import pluggy

from . import hookspecs

__all__ = ["check_name", "known_names", "notify_step_metrics", "plugin_manager", "resolve"]

Kind = Literal["regularizer", "discriminator", "preference_loss"]
_HOOKS: dict[str, str] = {
    "regularizer": "ganpo_regularizers",
    "discriminator": "ganpo_discriminators",
    "preference_loss": "ganpo_preference_losses",
}


@cache
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with the built-ins registered."""
    from . import builtin

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name="ganpo_plugins.builtin")
    return pm


def _entry_point_names() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=hookspecs.PROJECT)})


def _contributions(kind: Kind) -> dict[str, Any]:
    pm = plugin_manager()
    hook = getattr(pm.hook, _HOOKS[kind])
    merged: dict[str, Any] = {}
    for impl in reversed(hook.get_hookimpls()):  # registration order
        for name, obj in (impl.function() or {}).items():
            if name in merged:
                raise ValueError(f"{kind} {name!r} is contributed twice (again by plugin {impl.plugin_name!r})")
            merged[name] = obj
    return merged


def known_names(kind: Kind) -> list[str]:
    """Names a config may use: registered ones and those of not-yet-loaded entry points."""
    return sorted(set(_contributions(kind)) | set(_entry_point_names()))


def resolve(kind: Kind, name: str) -> Any:
    """The registered object for ``name``, loading the entry point of that name if needed."""
    found = _contributions(kind)
    if name not in found and name in _entry_point_names():
        plugin_manager().load_setuptools_entrypoints(hookspecs.PROJECT, name=name)
        found = _contributions(kind)
    if name not in found:
        raise ValueError(_unknown(kind, name, sorted(found)))
    return found[name]


def check_name(kind: Kind, name: str) -> str:
    """``name`` if it resolves, else ValueError listing the known names (config validators)."""
    resolve(kind, name)
    return name


def _unknown(kind: str, name: str, registered: list[str]) -> str:
    known = sorted(set(registered) | set(_entry_point_names()))
    hint = difflib.get_close_matches(name, known, n=1)
    return (
        f"unknown {kind} {name!r}; known: {', '.join(known)}"
        + (f". Did you mean {hint[0]!r}?" if hint else "")
        + f" Third-party {kind}s register under the entry-point group {hookspecs.PROJECT!r}."
    )


def notify_step_metrics(step: int, metrics: Mapping[str, float]) -> None:
    """Call every plugin's ``ganpo_step_metrics`` observer."""
    plugin_manager().hook.ganpo_step_metrics(step=step, metrics=metrics)
