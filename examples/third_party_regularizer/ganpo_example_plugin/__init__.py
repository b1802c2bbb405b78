"""A complete third-party regularizer: squared distance between pooled policy and reference latents."""

from pydantic import BaseModel, ConfigDict

from ganpo_plugins import LatentBatch, RegularizerConfig, RegularizerOutput, StepInfo, hookimpl
from ganpo_plugins.formulas.functional import masked_mean


class LatentL2Options(BaseModel):
    """``options:`` of ``latent_l2``."""

    model_config = ConfigDict(extra="forbid")
    squared: bool = True  # false: the distance itself, not its square


class LatentL2Config(RegularizerConfig):
    """The common keys (weight, mask, ...) and ``options:`` :class:`LatentL2Options`."""

    options_model = LatentL2Options


class LatentL2:
    config_model = LatentL2Config  # what `ganpo: {regularizer: latent_l2, ...}` may hold

    def __init__(self, config: LatentL2Config, context) -> None:
        self.weight, self.mask = config.weight, config.mask
        self.options = LatentL2Options.model_validate(config.options)

    def update(self, batch: LatentBatch, info: StepInfo) -> dict:
        return {}  # nothing to learn

    def policy_term(self, batch: LatentBatch) -> RegularizerOutput:
        mask_c, mask_r = batch.positions(self.mask)
        pairs = [(batch.policy_chosen, batch.ref_chosen, mask_c), (batch.policy_rejected, batch.ref_rejected, mask_r)]
        # The reference is a target: detached, so no gradient reaches the policy through it.
        squares = [(masked_mean(p.float(), m) - masked_mean(r.detach().float(), m)).pow(2).sum(-1) for p, r, m in pairs]
        dist = sum((s if self.options.squared else s.sqrt()).mean() for s in squares)
        return RegularizerOutput(self.weight * dist, {"latent_l2": dist.item()})

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state) -> None:
        pass


@hookimpl
def ganpo_regularizers():
    return {"latent_l2": LatentL2}
