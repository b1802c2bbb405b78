"""Hook specifications: the extension points of ganpo-plugins.

A plugin is a module or object with functions decorated by :data:`hookimpl` whose names match
the specs below. The built-ins (:mod:`ganpo_plugins.plugins.builtin`) register through exactly these
hooks. A third-party package exposes its plugin under the entry-point group
``ganpo_plugins``; the entry point's *name* is the name a config uses, and the plugin is
imported only when a config asks for that name::

    [project.entry-points.ganpo_plugins]
    my_regularizer = "my_package.plugin"

Factories:

- regularizer: ``factory(config, context: RegularizerContext) -> LatentRegularizer``, where
  ``config`` is an instance of the factory's ``config_model`` (a subclass of
  :class:`ganpo_plugins.config.RegularizerConfig`; the common keys only when it declares none)
- discriminator: ``factory(input_size: int, config: GANPOConfig) -> nn.Module`` mapping
  ``(hidden [B, T, H], mask [B, T])`` to scores ``[B]``
- preference loss: a :class:`ganpo_plugins.formulas.preference.PreferenceLoss`

Names must be unique across plugins: a plugin that contributes a name another plugin already
contributes is refused when it loads (the error names both plugins). Observers of
``ganpo_step_metrics`` are loaded by name with :func:`ganpo_plugins.plugins.registry.load_observers`.

Host adapters implement :func:`ganpo_attach` in a module exposed under the separate entry-point
group ``ganpo_plugins.hosts``; every adapter there is loaded when a trainer is to be claimed
(:func:`ganpo_plugins.plugins.registry.load_host_adapters`)::

    [project.entry-points."ganpo_plugins.hosts"]
    my_host = "my_package.host_adapter"
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ..formulas.preference import PreferenceLoss

PROJECT = "ganpo_plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ganpo_regularizers() -> Mapping[str, Callable[..., Any]]:
    """Contribute latent regularizers: ``{name: factory(config, context)}``.

    The factory returns an object satisfying :class:`ganpo_plugins.regularizers.protocol.LatentRegularizer`.
    Names must be unique across all plugins.
    """


@hookspec
def ganpo_discriminators() -> Mapping[str, Callable[..., Any]]:
    """Contribute discriminator architectures: ``{name: factory(input_size, config)}``."""


@hookspec
def ganpo_preference_losses() -> Mapping[str, PreferenceLoss]:
    """Contribute base preference losses: ``{name: PreferenceLoss}``."""


@hookspec
def ganpo_step_metrics(step: int, metrics: Mapping[str, float]) -> None:
    """Observe the regularizer metrics an adapter is about to log at optimiser step ``step``
    (names carry the ``ganpo/`` prefix). Return value ignored."""


@hookspec(firstresult=True)
def ganpo_attach(trainer: Any, config: Any, options: Mapping[str, Any]) -> Any | None:
    """Claim ``trainer`` and attach the configured regularizer to it; return the attachment handle (it has ``detach()``), or ``None`` when this adapter does not handle this kind of trainer. ``config`` is a validated ganpo_plugins config; ``options`` are adapter keyword options (e.g. ``ref_model``)."""  # noqa: E501
