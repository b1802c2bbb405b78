"""Base preference losses as registry entries: the GPO family and SimPO.

Adapters give a :class:`PairLogps` built from the host's own log-probabilities and get the
per-example loss; the math lives in :mod:`ganpo_plugins.formulas.functional`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .functional import GPO_KINDS, gpo_loss, preference_logits, simpo_loss

__all__ = ["PairLogps", "PreferenceLoss", "builtin_preference_losses", "chosen_then_rejected"]


@dataclass(frozen=True)
class PairLogps:
    """Summed response log-probabilities per pair, and response lengths (token counts).

    ``ref_*`` may be ``None`` for reference-free losses; lengths may be ``None`` for losses
    that do not length-normalise.
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_lengths: Tensor | None = None
    rejected_lengths: Tensor | None = None

    @classmethod
    def from_concatenated(cls, policy: Tensor, ref: Tensor | None, lengths: Tensor) -> PairLogps:
        """From ``[2B]`` log-probabilities and response lengths of a batch laid out as the hosts
        lay theirs out: every chosen response first, then every rejected one."""
        ref_pair = (None, None) if ref is None else ref.chunk(2)
        return cls(*policy.chunk(2), *ref_pair, *lengths.chunk(2))


def chosen_then_rejected(first_wins: Tensor) -> Tensor:
    """Row indices that turn two samples per prompt, stacked ``[first; second]`` on dim 0 (sample
    ``i`` and ``i + B`` for prompt ``i``, as online trainers sample them), into the ``[chosen;
    rejected]`` layout :meth:`PairLogps.from_concatenated` reads: chosen ``i + B·¬w_i``, rejected
    ``i + B·w_i``, where ``first_wins[i]`` says the first sample is preferred."""
    size = first_wins.shape[0]
    rows = torch.arange(size, device=first_wins.device)
    return torch.cat((rows + size * ~first_wins, rows + size * first_wins))


@dataclass(frozen=True)
class PreferenceLoss:
    """A named per-example preference loss ``fn(logps, beta, gamma) -> [B]``."""

    name: str
    fn: Callable[[PairLogps, float, float | None], Tensor]
    reference_free: bool = False

    def __call__(self, logps: PairLogps, beta: float, gamma: float | None = None) -> Tensor:
        if not self.reference_free and (logps.ref_chosen is None or logps.ref_rejected is None):
            raise ValueError(f"preference loss {self.name!r} needs reference log-probabilities")
        return self.fn(logps, beta, gamma)

    def loss_and_rewards(self, logps: PairLogps, beta: float, gamma: float | None = None) -> tuple[Tensor, ...]:
        """``(loss [B], chosen_rewards [B], rejected_rewards [B])``, the rewards detached: DPO's
        implicit reward ``β (log π − log π_ref)``, or SimPO's ``β · mean log π`` for a
        reference-free loss (docs/methods.md)."""
        loss = self(logps, beta, gamma)
        if self.reference_free:
            assert logps.chosen_lengths is not None and logps.rejected_lengths is not None
            chosen = logps.policy_chosen / logps.chosen_lengths.clamp_min(1)
            rejected = logps.policy_rejected / logps.rejected_lengths.clamp_min(1)
        else:
            assert logps.ref_chosen is not None and logps.ref_rejected is not None
            chosen = logps.policy_chosen - logps.ref_chosen
            rejected = logps.policy_rejected - logps.ref_rejected
        return loss, beta * chosen.detach(), beta * rejected.detach()


def _gpo(kind: str) -> PreferenceLoss:
    def fn(lp: PairLogps, beta: float, gamma: float | None) -> Tensor:
        logits = preference_logits(lp.policy_chosen, lp.policy_rejected, lp.ref_chosen, lp.ref_rejected, beta)
        return gpo_loss(logits, kind)

    return PreferenceLoss(kind, fn)


def _simpo(lp: PairLogps, beta: float, gamma: float | None) -> Tensor:
    if lp.chosen_lengths is None or lp.rejected_lengths is None:
        raise ValueError("simpo needs the response lengths to length-normalise log-probabilities")
    if gamma is None:
        raise ValueError("simpo needs a margin gamma (set simpo_gamma)")
    chosen = lp.policy_chosen / lp.chosen_lengths.clamp_min(1)
    rejected = lp.policy_rejected / lp.rejected_lengths.clamp_min(1)
    return simpo_loss(chosen, rejected, beta, gamma)


def builtin_preference_losses() -> dict[str, PreferenceLoss]:
    losses = {kind: _gpo(kind) for kind in GPO_KINDS}
    losses["simpo"] = PreferenceLoss("simpo", _simpo, reference_free=True)
    return losses
