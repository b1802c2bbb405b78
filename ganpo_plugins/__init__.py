"""ganpo-plugins: latent-space regularizers (GANPO and friends) for existing preference trainers.

The core is framework-agnostic; adapters attach it to TRL, Axolotl and OpenRLHF. Names are
imported on first use, so reading a config (:mod:`ganpo_plugins.config`) needs neither torch nor
the plugin registry.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "GANPOConfig": "ganpo_config",
    "GANPOConfigError": "config",
    "GANPORegularizer": "ganpo",
    "HiddenStateTap": "taps",
    "LatentBatch": "protocol",
    "LatentRegularizer": "protocol",
    "LearnedRegularizer": "learned",
    "MMDRegularizer": "mmd",
    "PairLogps": "preference",
    "PreferenceLoss": "preference",
    "RegularizerConfig": "config",
    "RegularizerContext": "protocol",
    "RegularizerOutput": "protocol",
    "RegularizerRunner": "runner",
    "StepInfo": "protocol",
    "UnpairedLatentBatch": "protocol",
    "attach": "hosts",
    "build_regularizer": "runner",
    "hookimpl": "hookspecs",
    "parse_config": "config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
