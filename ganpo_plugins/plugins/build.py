"""Build the regularizer a parsed config names: its factory and every component the config names
(a GANPO discriminator kind, ...) resolved through the registry, then checked against the protocol."""

from __future__ import annotations

import dataclasses

from ..config import RegularizerConfig
from ..regularizers.protocol import LatentRegularizer, RegularizerContext
from . import registry
from .parse import config_model

__all__ = ["build_regularizer"]


def build_regularizer(config: RegularizerConfig, context: RegularizerContext) -> LatentRegularizer:
    """Instantiate the configured regularizer and check that it satisfies the protocol.

    ``config`` is a parsed config (:func:`~ganpo_plugins.plugins.parse.parse_config`); the
    registered names it uses reach the factory resolved, in ``context.components``."""
    factory = registry.resolve("regularizer", config.regularizer)
    model = config_model(factory)
    if not isinstance(config, model):
        raise TypeError(
            f"regularizer {config.regularizer!r} reads a {model.__name__}, got a {type(config).__name__}: pass the "
            "block through ganpo_plugins.parse_config (or a mapping) instead"
        )
    components = {key: registry.resolve(kind, name) for key, (kind, name) in config.registered_names().items()}
    context = dataclasses.replace(context, components={**components, **context.components})
    regularizer = factory(config, context)
    if not isinstance(regularizer, LatentRegularizer):
        raise TypeError(
            f"regularizer {config.regularizer!r} built a {type(regularizer).__name__}, which lacks part of "
            "the LatentRegularizer protocol (mask, update, policy_term, state_dict, load_state_dict)"
        )
    return regularizer
