"""The built-in plugin: registers GANPO, MMD, both discriminators and the preference losses
through the same hooks a third-party plugin implements."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from .discriminators import MLPDiscriminator, TransformerDiscriminator
from .ganpo_config import GANPOConfig
from .hookspecs import hookimpl
from .preference import PreferenceLoss, builtin_preference_losses


def _transformer(input_size: int, config: GANPOConfig) -> nn.Module:
    d = config.discriminator
    power_iterations = d.power_iterations if d.spectral_norm else None
    return TransformerDiscriminator(
        input_size, d.d_model, d.num_layers, d.num_heads, d.ffn_size, d.dropout, config.max_positions, power_iterations
    )


def _mlp(input_size: int, config: GANPOConfig) -> nn.Module:
    d = config.discriminator
    return MLPDiscriminator(input_size, d.d_model, d.num_layers, d.power_iterations if d.spectral_norm else None)


@hookimpl
def ganpo_regularizers() -> Mapping[str, Callable[..., Any]]:
    from .ganpo import GANPORegularizer
    from .mmd import MMDRegularizer

    return {"ganpo": GANPORegularizer, "mmd": MMDRegularizer}


@hookimpl
def ganpo_discriminators() -> Mapping[str, Callable[..., Any]]:
    return {"transformer": _transformer, "mlp": _mlp}


@hookimpl
def ganpo_preference_losses() -> Mapping[str, PreferenceLoss]:
    return builtin_preference_losses()
