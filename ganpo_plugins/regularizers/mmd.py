"""A non-adversarial latent regularizer: kernel MMD between pooled policy and reference latents.

It has no parameters and learns nothing; it exists to show that the protocol is not tied to
discriminators. ``L_reg = MMD²(pool h_θ+, pool h_r+) + MMD²(pool h_θ−, pool h_r−)`` over the
pairs of a micro-batch, with :func:`ganpo_plugins.formulas.functional.rbf_mmd2` and masked mean pooling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from ..config import RegularizerConfig
from ..formulas.functional import masked_mean, rbf_mmd2
from .protocol import LatentBatch, Metrics, RegularizerContext, RegularizerOutput, StepInfo

__all__ = ["MMDConfig", "MMDOptions", "MMDRegularizer"]


class MMDOptions(BaseModel):
    """``options:`` of the ``mmd`` regularizer."""

    model_config = ConfigDict(extra="forbid")
    bandwidths: tuple[float, ...] = Field((0.5, 1.0, 2.0, 4.0), min_length=1)


class MMDConfig(RegularizerConfig):
    """The common keys and ``options:`` :class:`MMDOptions`."""

    options_model = MMDOptions


class MMDRegularizer:
    """RBF-kernel MMD between pooled policy and reference latents, chosen and rejected."""

    config_model = MMDConfig

    def __init__(self, config: MMDConfig, context: RegularizerContext) -> None:
        self.weight = config.weight
        self.mask = config.mask
        self.options = MMDOptions.model_validate(config.options)

    def update(self, batch: LatentBatch, info: StepInfo) -> Metrics:
        return {}

    def policy_term(self, batch: LatentBatch) -> RegularizerOutput:
        mask_c, mask_r = batch.positions(self.mask)
        bw = self.options.bandwidths
        chosen = rbf_mmd2(_pool(batch.policy_chosen, mask_c), _pool(batch.ref_chosen.detach(), mask_c), bw)
        rejected = rbf_mmd2(_pool(batch.policy_rejected, mask_r), _pool(batch.ref_rejected.detach(), mask_r), bw)
        mmd = chosen + rejected
        return RegularizerOutput(self.weight * mmd, {"mmd_chosen": chosen.item(), "mmd_rejected": rejected.item()})

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


def _pool(hidden: Tensor, mask: Tensor) -> Tensor:
    # Zeroed first: an inf at an unselected (prompt, padding) position would give inf · 0 = NaN.
    return masked_mean(hidden.float().masked_fill(~mask.bool().unsqueeze(-1), 0), mask)
