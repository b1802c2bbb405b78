"""GANPO: latent adversarial regularization with two relativistic discriminators (arXiv 2601.22083).

What is GANPO lives here: the discriminators D+ and D−, the six running means μ, their losses
and the generator term, and saturation tracking. Their optimisers and schedule, RNG stream,
accumulation, data-parallel sync and state are :class:`~ganpo_plugins.regularizers.learned.LearnedRegularizer`'s.
The formulas are in :mod:`ganpo_plugins.formulas.functional`; docs/methods.md states the method and
every deviation from the public release.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..formulas.discriminators import MLPDiscriminator, TransformerDiscriminator, compact_positions, pad_and_stack
from ..formulas.functional import ragan_discriminator_loss, ragan_generator_loss
from .distributed import all_reduce_sum
from .ganpo_config import GANPOConfig
from .learned import LearnedRegularizer
from .protocol import LatentBatch, Metrics, RegularizerContext, RegularizerOutput

__all__ = ["BUILTIN_DISCRIMINATORS", "SIDES", "GANPORegularizer", "mlp_discriminator", "transformer_discriminator"]

# Order of the six running means: for each discriminator, its (real, fake, other) inputs.
# D+: (h_r+, h_θ+, h_r−) → μ+(r+), μ+(θ), μ+(r−);  D−: (h_r−, h_θ−, h_r+) → μ−(r−), μ−(θ), μ−(r+).
SIDES = ("pos", "neg")
_ROLES = ("real", "fake", "other")


def transformer_discriminator(input_size: int, config: GANPOConfig) -> nn.Module:
    """The paper's Transformer discriminator, sized by ``config.discriminator``."""
    d = config.discriminator
    power_iterations = d.power_iterations if d.spectral_norm else None
    return TransformerDiscriminator(
        input_size, d.d_model, d.num_layers, d.num_heads, d.ffn_size, d.dropout, config.max_positions, power_iterations
    )


def mlp_discriminator(input_size: int, config: GANPOConfig) -> nn.Module:
    """The MLP discriminator (the paper's ablation), sized by ``config.discriminator``."""
    d = config.discriminator
    return MLPDiscriminator(input_size, d.d_model, d.num_layers, d.power_iterations if d.spectral_norm else None)


#: The discriminators GANPO ships (the built-in plugin registers them under these names).
BUILTIN_DISCRIMINATORS = {"transformer": transformer_discriminator, "mlp": mlp_discriminator}


def _saturated(accuracy: float) -> bool:
    return accuracy >= 0.99 or accuracy <= 0.51


class GANPORegularizer(LearnedRegularizer):
    """The GANPO latent regularizer; satisfies :class:`~ganpo_plugins.regularizers.protocol.LatentRegularizer`."""

    config_model = GANPOConfig
    label = "GANPO"
    config: GANPOConfig

    def __init__(self, config: GANPOConfig, context: RegularizerContext) -> None:
        if context.ref_hidden_size not in (None, context.hidden_size):
            raise ValueError(
                f"policy hidden size {context.hidden_size} differs from reference hidden size "
                f"{context.ref_hidden_size}: GANPO compares the two latent spaces position by position "
                "and needs a reference of the same architecture (use the policy's own base model)"
            )
        super().__init__(config, context)
        self.mu = torch.zeros(2, 3, device=self.device)  # [side, role]
        self.mu_initialized = False
        self.saturated_run = [0, 0]

    def build_discriminators(self, context: RegularizerContext) -> nn.ModuleDict:
        kind = self.config.discriminator.kind
        factory = context.components.get("discriminator.kind", BUILTIN_DISCRIMINATORS.get(kind))
        if factory is None:
            raise ValueError(
                f"discriminator {kind!r} is not built in; build the regularizer with ganpo_plugins.build_regularizer, "
                "which resolves a plugin's discriminator through the registry"
            )
        return nn.ModuleDict({side: factory(context.hidden_size, self.config) for side in SIDES})

    def _select(self, batch: LatentBatch) -> tuple[list[tuple[Tensor, Tensor]], bool]:
        """Compact the four latents to their selected positions: ``[(h, mask)]`` in the order
        (r+, θ+, r−, θ−), dropping the rows that select nothing: the whole pair in a paired batch,
        the row alone in an unpaired one (whose sides may differ in size). The flag is false when a
        side has no row left (an empty side: the runner counts it) or a selected value is not finite."""
        mask_c, mask_r = batch.positions(self.mask)
        keep_c, keep_r = mask_c.any(1), mask_r.any(1)
        if batch.paired:
            keep_c = keep_r = keep_c & keep_r
        if not (bool(keep_c.any()) and bool(keep_r.any())):
            # A side with no rows is routine online (every advantage of one sign); rows that select
            # nothing (e.g. empty responses under mask: response) are worth a word.
            if any(keep.numel() and not bool(keep.any()) for keep in (keep_c, keep_r)):
                message = (
                    "GANPO: a side of a batch had rows but no selected positions; its regularizer step was skipped"
                )
                self._warn_once("empty", message)
            return [], False
        parts = []
        for hidden, mask, keep in (
            (batch.ref_chosen, mask_c, keep_c),
            (batch.policy_chosen, mask_c, keep_c),
            (batch.ref_rejected, mask_r, keep_r),
            (batch.policy_rejected, mask_r, keep_r),
        ):
            h, m = compact_positions(hidden[keep], mask[keep], self.config.max_positions)
            parts.append((h.float(), m))
        finite = all(bool(torch.isfinite(h).all()) for h, _ in parts)
        if not finite:
            self._warn_once(
                "nonfinite",
                "GANPO: non-finite hidden states in a batch; its regularizer step was skipped "
                "(counted in ganpo/skipped)",
            )
        return parts, finite

    def _scores(self, parts: list[tuple[Tensor, Tensor]]) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        """Each discriminator scores its (real, fake, other) inputs in one batched forward."""
        ref_c, pol_c, ref_r, pol_r = parts
        inputs = {"pos": (ref_c, pol_c, ref_r), "neg": (ref_r, pol_r, ref_c)}
        scores = {}
        for side in SIDES:
            hidden, mask = pad_and_stack([(h.detach(), m) for h, m in inputs[side]])
            sizes = [h.shape[0] for h, _ in inputs[side]]
            scores[side] = tuple(self.discriminators[side](hidden, mask).split(sizes))
        return scores

    def discriminator_loss(self, batch: LatentBatch) -> tuple[Tensor, Metrics] | None:
        """``L_D+ + L_D−`` with μ updated first by this batch's six mean scores (averaged over
        the ranks; a skipped batch still joins that all-reduce, so no rank waits forever)."""
        parts, usable = self._select(batch)
        scores = self._scores(parts) if usable else None
        if scores is not None and not all(bool(torch.isfinite(s).all()) for t in scores.values() for s in t):
            self._warn_once("nonfinite_scores", "GANPO: non-finite discriminator scores; regularizer step skipped")
            scores = None
        valid = torch.tensor([0.0 if scores is None else 1.0], device=self.device)
        means = torch.zeros(2, 3, device=self.device)
        if scores is not None:
            means = torch.stack([torch.stack([s.detach().mean() for s in scores[side]]) for side in SIDES])
        stats = all_reduce_sum(torch.cat([means.flatten() * valid, valid]), self.group)
        if stats[-1] > 0:
            batch_means = (stats[:-1] / stats[-1]).view(2, 3).clone()
            m = self.config.ema_momentum
            self.mu = batch_means if not self.mu_initialized else m * self.mu + (1 - m) * batch_means
            self.mu_initialized = True
        if scores is None:
            return None
        metrics: Metrics = {}
        total = torch.zeros((), device=self.device)
        for i, side in enumerate(SIDES):
            real, fake, other = scores[side]
            mu_real, mu_fake, mu_other = self.mu[i]
            loss = ragan_discriminator_loss(real, fake, other, mu_real, mu_fake, mu_other)
            total = total + loss
            correct = torch.cat([real - mu_fake > 0, fake - mu_real < 0, fake - mu_other > 0, other - mu_fake < 0])
            metrics[f"d_{side}/loss"] = loss.item()
            metrics[f"d_{side}/accuracy"] = correct.float().mean().item()
            metrics[f"d_{side}/real_fake_gap"] = (real.mean() - fake.mean()).item()
            for role, value in zip(_ROLES, self.mu[i].tolist(), strict=True):
                metrics[f"d_{side}/mu_{role}"] = value
        return total, metrics

    def on_policy_step(self, metrics: Metrics) -> Metrics:
        """Count each discriminator's consecutive saturated steps; warn at ``saturation_patience``."""
        out: Metrics = {}
        for i, side in enumerate(SIDES):
            acc = metrics.get(f"d_{side}/accuracy")
            if acc is None:
                continue
            self.saturated_run[i] = self.saturated_run[i] + 1 if _saturated(acc) else 0
            out[f"d_{side}/saturated_steps"] = float(self.saturated_run[i])
            if self.saturated_run[i] == self.config.saturation_patience:
                warnings.warn(
                    f"GANPO: discriminator D{'+' if side == 'pos' else '-'} has stayed saturated "
                    f"(accuracy {acc:.3f}, outside (0.51, 0.99)) for {self.saturated_run[i]} steps: "
                    "near 0.5 it cannot tell policy from reference latents; near 1 it wins outright "
                    "and its gradient to the policy vanishes (see docs/reliability.md)",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return out

    def policy_term(self, batch: LatentBatch) -> RegularizerOutput:
        """``weight · L_adv`` with frozen, eval-mode discriminators and the current μ."""
        parts, usable = self._select(batch)
        if not usable:
            return self._skipped_term(batch)
        with self._frozen_eval():
            _, pol_c, _, pol_r = parts
            fake_pos = self.discriminators["pos"](*pol_c)
            fake_neg = self.discriminators["neg"](*pol_r)
            adv = ragan_generator_loss(fake_pos, self.mu[0, 0], fake_neg, self.mu[1, 0])
        if not bool(torch.isfinite(adv)):
            self._warn_once("nonfinite_scores", "GANPO: non-finite discriminator scores; regularizer step skipped")
            return self._skipped_term(batch)
        return RegularizerOutput(self.weight * adv, {"adv_loss": adv.item(), "term_skipped": 0.0})

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "mu": self.mu.clone(),
            "mu_initialized": self.mu_initialized,
            "saturated_run": list(self.saturated_run),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.mu = state["mu"].to(self.device, torch.float32)
        self.mu_initialized = bool(state["mu_initialized"])
        self.saturated_run = [int(x) for x in state["saturated_run"]]
