"""ganpo-plugins: latent-space regularizers (GANPO and friends) for existing preference trainers.

The core is framework-agnostic; adapters attach it to TRL, Axolotl and OpenRLHF.
"""

from .config import GANPOConfig, GANPOConfigError, parse_config
from .ganpo import GANPORegularizer
from .hookspecs import hookimpl
from .hosts import attach
from .mmd import MMDRegularizer
from .preference import PairLogps, PreferenceLoss
from .protocol import LatentBatch, LatentRegularizer, RegularizerContext, RegularizerOutput, StepInfo
from .runner import RegularizerRunner, build_regularizer
from .taps import HiddenStateTap

__version__ = "0.1.0"

__all__ = [
    "GANPOConfig",
    "GANPOConfigError",
    "GANPORegularizer",
    "HiddenStateTap",
    "LatentBatch",
    "LatentRegularizer",
    "MMDRegularizer",
    "PairLogps",
    "PreferenceLoss",
    "RegularizerContext",
    "RegularizerOutput",
    "RegularizerRunner",
    "StepInfo",
    "attach",
    "build_regularizer",
    "hookimpl",
    "parse_config",
]
