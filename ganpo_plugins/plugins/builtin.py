"""The built-in plugin: registers GANPO, MMD, both discriminators and the preference losses
through the same hooks a third-party plugin implements."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..formulas.preference import PreferenceLoss, builtin_preference_losses
from ..regularizers.ganpo import BUILTIN_DISCRIMINATORS, GANPORegularizer
from ..regularizers.mmd import MMDRegularizer
from .hookspecs import hookimpl


@hookimpl
def ganpo_regularizers() -> Mapping[str, Callable[..., Any]]:
    return {"ganpo": GANPORegularizer, "mmd": MMDRegularizer}


@hookimpl
def ganpo_discriminators() -> Mapping[str, Callable[..., Any]]:
    return dict(BUILTIN_DISCRIMINATORS)


@hookimpl
def ganpo_preference_losses() -> Mapping[str, PreferenceLoss]:
    return builtin_preference_losses()
