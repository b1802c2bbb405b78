"""A complete third-party regularizer: squared distance between pooled policy and reference latents."""

from ganpo_plugins import LatentBatch, RegularizerOutput, StepInfo, hookimpl
from ganpo_plugins.functional import masked_mean


class LatentL2:
    name = "latent_l2"
    config_keys = frozenset()  # reads only the common keys (weight, mask, ...)

    def __init__(self, config, context):
        self.weight, self.mask = config.weight, config.mask

    def update(self, batch: LatentBatch, info: StepInfo) -> dict:
        return {}  # nothing to learn

    def policy_term(self, batch: LatentBatch) -> RegularizerOutput:
        mask_c, mask_r = batch.positions(self.mask)
        pairs = [(batch.policy_chosen, batch.ref_chosen, mask_c), (batch.policy_rejected, batch.ref_rejected, mask_r)]
        dist = sum((masked_mean(p.float(), m) - masked_mean(r.float(), m)).pow(2).sum(-1).mean() for p, r, m in pairs)
        return RegularizerOutput(self.weight * dist, {"latent_l2": float(dist)})

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state) -> None:
        pass


@hookimpl
def ganpo_regularizers():
    return {"latent_l2": LatentL2}
