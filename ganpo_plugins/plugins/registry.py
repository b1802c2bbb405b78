"""The plugin managers: built-ins plus entry points of the group ``ganpo_plugins``, loaded by
name, and host adapters from the group ``ganpo_plugins.hosts``.

An entry point of ``ganpo_plugins`` is imported only when a config names it (never at start-up),
so installing a package cannot run its code in a training job that does not ask for it. Every
plugin is checked when it registers: it must implement at least one hook, only hooks that
exist, and no name another plugin already contributes; a plugin that fails is unregistered
and named in the error, and the rest of the registry keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

import pluggy

from . import hookspecs

__all__ = [
    "HOSTS_GROUP",
    "PluginError",
    "check_name",
    "fresh_plugin_manager",
    "host_adapter_failures",
    "known_names",
    "load_host_adapters",
    "load_observers",
    "not_loaded_plugins",
    "notify_step_metrics",
    "plugin_manager",
    "register_plugin",
    "resolve",
]

HOSTS_GROUP = "ganpo_plugins.hosts"
BUILTIN = "ganpo_plugins.builtin"  # the built-in plugin's name in messages (unchanged since 0.1)

Kind = Literal["regularizer", "discriminator", "preference_loss"]
_HOOKS: dict[str, str] = {
    "regularizer": "ganpo_regularizers",
    "discriminator": "ganpo_discriminators",
    "preference_loss": "ganpo_preference_losses",
}


class PluginError(ValueError):
    """A plugin cannot be used; the message names the plugin, where it comes from and the fix.

    A ``ValueError``, so a config validator that meets it reports it under the config key."""


@dataclass
class _Registry:
    pm: pluggy.PluginManager
    owners: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> plugin name
    rejected: dict[str, str] = field(default_factory=dict)  # entry-point name -> why it was refused
    hosts: pluggy.PluginManager | None = None
    host_failures: dict[str, str] = field(default_factory=dict)


_registry: _Registry | None = None


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def _state() -> _Registry:
    global _registry
    if _registry is None:
        from . import builtin

        state = _Registry(_new_manager())
        _admit(state, builtin, BUILTIN, "built-in")
        _registry = state
    return _registry


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with the built-ins registered."""
    return _state().pm


def fresh_plugin_manager() -> pluggy.PluginManager:
    """Replace the process-wide managers by new ones holding only the built-ins, and return the
    plugin manager. For tests: a training run never needs it."""
    global _registry
    _registry = None
    return plugin_manager()


def _origin(ep: EntryPoint) -> str:
    dist = f"distribution {ep.dist.name} {ep.dist.version}" if ep.dist is not None else "an unknown distribution"
    return f"entry point '{ep.name} = {ep.value}' of {dist}"


def _admit(state: _Registry, plugin: object, name: str, origin: str) -> None:
    """Register ``plugin`` as ``name``; unregister it again and raise PluginError when it
    implements no hook, an unknown hook, or a name another plugin already contributes."""
    pm = state.pm
    label = f"plugin {name!r} ({origin})"
    if pm.has_plugin(name):
        raise PluginError(f"{label}: a plugin named {name!r} is already registered; give it another name")
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        raise PluginError(
            f"{label} does not match the ganpo_plugins hooks: {exc}; the hooks are {', '.join(_hook_names())}"
        ) from None
    if not pm.get_hookcallers(plugin):
        pm.unregister(plugin)
        raise PluginError(
            f"{label} registers no ganpo_plugins hooks: decorate its functions with ganpo_plugins.hookimpl and "
            f"name them after a hook ({', '.join(_hook_names())})"
        )
    others = [p for p in pm.get_plugins() if p is not plugin]
    contributed: dict[tuple[str, str], str] = {}
    for kind, hook in _HOOKS.items():
        try:
            results = pm.subset_hook_caller(hook, remove_plugins=others)()
        except Exception as exc:  # its own code failed: name the plugin, not just the traceback
            pm.unregister(plugin)
            raise PluginError(f"{label}: its {hook} hook raised {type(exc).__name__}: {exc}") from exc
        for names in results:
            if not isinstance(names, Mapping):
                pm.unregister(plugin)
                raise PluginError(f"{label}: {hook} must return a mapping {{name: object}}, got {type(names).__name__}")
            for contribution in names:
                owner = state.owners.get((kind, contribution))
                if owner is not None:
                    pm.unregister(plugin)
                    raise PluginError(
                        f"{label} contributes {kind} {contribution!r}, which plugin {owner!r} already contributes; "
                        f"names are unique across plugins: rename it in {name!r} or uninstall one of the two"
                    )
                contributed[(kind, contribution)] = name
    state.owners.update(contributed)


def _hook_names() -> list[str]:
    """The hooks of the ``ganpo_plugins`` group (``ganpo_attach`` belongs to host adapters)."""
    return sorted([*_HOOKS.values(), "ganpo_step_metrics"])


def register_plugin(plugin: object, name: str) -> None:
    """Register a plugin object (a module or instance with :data:`~ganpo_plugins.hookimpl`
    functions) under ``name`` without an entry point, e.g. from a notebook or a test."""
    _admit(_state(), plugin, name, "registered in code")


def _entry_point(group: str, name: str) -> EntryPoint | None:
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    if len(found) > 1:
        raise PluginError(
            f"{len(found)} installed entry points are named {name!r} in group {group!r} "
            f"({'; '.join(_origin(ep) for ep in found)}); uninstall all but one"
        )
    return found[0] if found else None


def _load(name: str) -> bool:
    """Import and register the ``ganpo_plugins`` entry point ``name``; ``False`` if none exists.
    A plugin refused once is refused again with the same message, without re-importing it."""
    state = _state()
    if name in state.rejected:
        raise PluginError(state.rejected[name])
    if state.pm.has_plugin(name):
        return True
    ep = _entry_point(hookspecs.PROJECT, name)
    if ep is None:
        return False
    try:
        plugin = ep.load()
    except Exception as exc:  # whatever its module raises, the user needs the plugin's name
        dist = ep.dist.name if ep.dist is not None else "its distribution"
        state.rejected[name] = (
            f"plugin {name!r} ({_origin(ep)}) failed to import: {type(exc).__name__}: {exc}; "
            f"fix or reinstall {dist}, or stop naming {name!r} in the config"
        )
        raise PluginError(state.rejected[name]) from exc
    try:
        _admit(state, plugin, name, _origin(ep))
    except PluginError as exc:
        state.rejected[name] = str(exc)
        raise
    return True


def _entry_point_names() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=hookspecs.PROJECT)})


def not_loaded_plugins() -> list[str]:
    """Installed ``ganpo_plugins`` entry points not imported yet (their kinds are unknown until
    a config names one)."""
    state = _state()
    return [n for n in _entry_point_names() if not state.pm.has_plugin(n) and n not in state.rejected]


def _contributions(kind: Kind) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for names in getattr(plugin_manager().hook, _HOOKS[kind])():
        merged.update(names)  # unique by construction: _admit refuses a plugin that repeats a name
    return merged


def known_names(kind: Kind) -> list[str]:
    """Names of ``kind`` registered now (built-ins and loaded plugins); see
    :func:`not_loaded_plugins` for the installed plugins a config may still name."""
    return sorted(_contributions(kind))


def resolve(kind: Kind, name: str) -> Any:
    """The registered object for ``name``, loading the entry point of that name if needed."""
    found = _contributions(kind)
    if name not in found and _load(name):
        found = _contributions(kind)
    if name not in found:
        raise PluginError(_unknown(kind, name, sorted(found)))
    return found[name]


def check_name(kind: Kind, name: str) -> str:
    """``name`` if it resolves, else ValueError listing the known names (config validators)."""
    resolve(kind, name)
    return name


def _unknown(kind: str, name: str, registered: list[str]) -> str:
    state = _state()
    pending = not_loaded_plugins()
    hint = difflib.get_close_matches(name, registered + pending, n=1)
    loaded = ""
    if state.pm.has_plugin(name):
        offers = sorted(f"{k} {n!r}" for (k, n), owner in state.owners.items() if owner == name)
        loaded = f" (plugin {name!r} is loaded but contributes {', '.join(offers) or 'no names'})"
    return (
        f"unknown {kind} {name!r}{loaded}; known: {', '.join(registered)}"
        + (f"; installed plugins not loaded yet: {', '.join(pending)}" if pending else "")
        + (f". Did you mean {hint[0]!r}?" if hint else ".")
        + f" Third-party {kind}s register under the entry-point group {hookspecs.PROJECT!r}."
    )


def load_observers(names: list[str]) -> None:
    """Load the ``ganpo_plugins`` entry points ``names`` so that their ``ganpo_step_metrics``
    observers are called; each must implement that hook."""
    pm = plugin_manager()
    for name in names:
        if not _load(name):
            installed = ", ".join(not_loaded_plugins()) or "none"
            raise PluginError(
                f"observer {name!r}: no plugin of that name is registered or installed under the entry-point "
                f"group {hookspecs.PROJECT!r} (installed, not loaded: {installed}); install it or fix the name"
            )
        plugin = pm.get_plugin(name)
        if pm.hook.ganpo_step_metrics not in (pm.get_hookcallers(plugin) or []):
            raise PluginError(f"observer {name!r} implements no ganpo_step_metrics hook; it cannot observe metrics")


def notify_step_metrics(step: int, metrics: Mapping[str, float]) -> None:
    """Call every plugin's ``ganpo_step_metrics`` observer."""
    plugin_manager().hook.ganpo_step_metrics(step=step, metrics=metrics)


def load_host_adapters() -> pluggy.PluginManager:
    """A plugin manager holding every host adapter of the entry-point group
    ``ganpo_plugins.hosts`` (each value a module implementing ``ganpo_attach``), loaded once per
    process. An adapter that fails to import or register is left out and recorded in
    :func:`host_adapter_failures`; the others still load."""
    state = _state()
    if state.hosts is None:
        pm = _new_manager()
        for ep in entry_points(group=HOSTS_GROUP):
            label = f"host adapter {ep.name!r} ({_origin(ep)})"
            try:
                plugin = ep.load()
            except Exception as exc:  # one broken adapter must not hide the others
                state.host_failures[ep.name] = f"{label} failed to import: {type(exc).__name__}: {exc}"
                continue
            try:
                pm.register(plugin, name=ep.name)
                pm.check_pending()
            except (ValueError, pluggy.PluginValidationError) as exc:
                if pm.is_registered(plugin):
                    pm.unregister(plugin)
                state.host_failures[ep.name] = f"{label} cannot register: {exc}"
                continue
            if pm.hook.ganpo_attach not in (pm.get_hookcallers(plugin) or []):
                pm.unregister(plugin)
                state.host_failures[ep.name] = f"{label} implements no ganpo_attach hook"
        state.hosts = pm
    return state.hosts


def host_adapter_failures() -> dict[str, str]:
    """Host adapters that could not be loaded: entry-point name → why. Report them when no
    adapter claims a trainer (one of them may have been meant to)."""
    load_host_adapters()
    return dict(_state().host_failures)
