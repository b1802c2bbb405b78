"""ganpo-plugins: latent-space regularizers (GANPO and friends) for existing preference trainers.

The core is framework-agnostic; adapters attach it to TRL, Axolotl and OpenRLHF. Its layers, each
importing only those below it (docs/architecture.md):

- :mod:`ganpo_plugins.config`: the config schema (neither torch nor the registry);
- :mod:`ganpo_plugins.formulas`: pure math: losses, discriminators, log-probabilities;
- :mod:`ganpo_plugins.regularizers`: the protocol, ``LearnedRegularizer``, GANPO and MMD;
- :mod:`ganpo_plugins.plugins`: hookspecs, plugin managers, built-ins, config parsing, ``attach``;
- :mod:`ganpo_plugins.adapter_kit`: what every host adapter uses (one public face);
- :mod:`ganpo_plugins.tools`: doctor, score, plot; :mod:`ganpo_plugins.apo`: APO rounds.

Names are imported on first use, so reading a config needs neither torch nor the plugin registry.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import _moved

__version__ = "0.1.0"

_EXPORTS = {
    "GANPOConfig": "regularizers.ganpo_config",
    "GANPOConfigError": "config",
    "GANPORegularizer": "regularizers.ganpo",
    "HiddenStateTap": "adapter_kit.taps",
    "LatentBatch": "regularizers.protocol",
    "LatentRegularizer": "regularizers.protocol",
    "LearnedRegularizer": "regularizers.learned",
    "MMDRegularizer": "regularizers.mmd",
    "PairLogps": "formulas.preference",
    "PreferenceLoss": "formulas.preference",
    "RegularizerConfig": "config",
    "RegularizerContext": "regularizers.protocol",
    "RegularizerOutput": "regularizers.protocol",
    "RegularizerRunner": "adapter_kit.runner",
    "StepInfo": "regularizers.protocol",
    "UnpairedLatentBatch": "regularizers.protocol",
    "attach": "plugins.dispatch",
    "build_regularizer": "plugins.build",
    "hookimpl": "plugins.hookspecs",
    "parse_config": "plugins.parse",
}

__all__ = sorted(_EXPORTS)

_moved.install()


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
