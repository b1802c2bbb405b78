"""Pure loss functions: one formula per function, no state, no host types.

Papers:
- GPO: Tang et al., "Generalized Preference Optimization: A Unified Approach to Offline
  Alignment", arXiv 2402.05749.
- SimPO: Meng et al., "SimPO: Simple Preference Optimization with a Reference-Free Reward",
  arXiv 2405.14734.
- GANPO: "Latent adversarial regularization for preference optimization", arXiv 2601.22083
  (relativistic-average GAN losses on last-layer hidden states).
- RaGAN: Jolicoeur-Martineau, "The relativistic discriminator", arXiv 1807.00734.
- APO: Cheng et al., "Adversarial Preference Optimization", arXiv 2311.08045.

Per-example functions return a tensor shaped like their inputs; the caller reduces.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "GPO_KINDS",
    "GPOKind",
    "apo_rm_loss",
    "bradley_terry_loss",
    "gpo_loss",
    "lr_schedule_factor",
    "masked_mean",
    "preference_logits",
    "ragan_discriminator_loss",
    "ragan_generator_loss",
    "rbf_mmd2",
    "simpo_loss",
]


def preference_logits(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> Tensor:
    """GPO argument ``x = β·ρ`` per example (GPO, arXiv 2402.05749, eq. 3).

    ``ρ = (logπ_θ(y+|x) − logπ_ref(y+|x)) − (logπ_θ(y−|x) − logπ_ref(y−|x))`` with summed
    response-token log-probabilities.
    """
    return beta * ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps))


def _logistic(x: Tensor) -> Tensor:
    return F.softplus(-x)  # log(1 + e^(−x)), stable for large |x|


def _hinge(x: Tensor) -> Tensor:
    return torch.relu(1 - x)


def _squared(x: Tensor) -> Tensor:
    return (x - 1) ** 2


def _exponential(x: Tensor) -> Tensor:
    return torch.exp(-x)


def _truncated_quadratic(x: Tensor) -> Tensor:
    return torch.relu(1 - x) ** 2


def _savage(x: Tensor) -> Tensor:
    return torch.sigmoid(-x) ** 2  # 1 / (1 + e^x)^2


@dataclass(frozen=True)
class GPOKind:
    """One convex ``f`` of the GPO family with its derivatives at 0 (arXiv 2402.05749, Table 1).

    ``f''(0) / |f'(0)|`` sets how strongly the loss regularizes toward the reference.
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    d1_at_0: float
    d2_at_0: float
    known_as: str

    @property
    def regularization_strength(self) -> float:
        return self.d2_at_0 / abs(self.d1_at_0)


GPO_KINDS: dict[str, GPOKind] = {
    k.name: k
    for k in (
        GPOKind("logistic", _logistic, -0.5, 0.25, "DPO"),
        GPOKind("hinge", _hinge, -1.0, 0.0, "SLiC"),
        GPOKind("squared", _squared, -2.0, 2.0, "IPO (up to the scaling of β)"),
        GPOKind("exponential", _exponential, -1.0, 1.0, ""),
        GPOKind("truncated_quadratic", _truncated_quadratic, -2.0, 2.0, ""),
        GPOKind("savage", _savage, -0.25, 0.125, ""),
    )
}


def gpo_loss(logits: Tensor, kind: str) -> Tensor:
    """Per-example GPO loss ``f(x)`` at ``x = β·ρ`` (arXiv 2402.05749, eq. 4).

    ======================  =====================
    kind                    f(x)
    ======================  =====================
    logistic (DPO)          log(1 + e^(−x))
    hinge (SLiC)            max(0, 1 − x)
    squared (IPO-like)      (x − 1)²
    exponential             e^(−x)
    truncated_quadratic     max(0, 1 − x)²
    savage                  1 / (1 + e^x)²
    ======================  =====================
    """
    try:
        return GPO_KINDS[kind].fn(logits)
    except KeyError:
        raise ValueError(f"unknown GPO kind {kind!r}; known kinds: {', '.join(GPO_KINDS)}") from None


def simpo_loss(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, beta: float, gamma: float) -> Tensor:
    """Per-example SimPO loss (arXiv 2405.14734, eq. 6).

    ``−log σ(β·(mean logπ_θ(y+|x) − mean logπ_θ(y−|x)) − γ)`` with length-averaged
    response log-probabilities; reference-free.
    """
    return F.softplus(-(beta * (chosen_avg_logps - rejected_avg_logps) - gamma))


def _bce_with_logits(logits: Tensor, target: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def ragan_discriminator_loss(
    real: Tensor, fake: Tensor, other: Tensor, mu_real: Tensor, mu_fake: Tensor, mu_other: Tensor
) -> Tensor:
    """Relativistic-average discriminator loss of one GANPO discriminator (arXiv 2601.22083, §3).

    ``¼ [BCE(real − μ_fake, 1) + BCE(fake − μ_real, 0) + BCE(fake − μ_other, 1) + BCE(other − μ_fake, 0)]``

    BCE is binary cross-entropy with logits, mean over the batch. The discriminator learns the
    ordering ``real > fake > other``. D+ takes real = D+(h_r+), fake = D+(h_θ+), other = D+(h_r−);
    D− the mirror: real = D−(h_r−), fake = D−(h_θ−), other = D−(h_r+). The μ are the running
    means of the same scores, treated as constants.
    """
    return 0.25 * (
        _bce_with_logits(real - mu_fake, 1.0)
        + _bce_with_logits(fake - mu_real, 0.0)
        + _bce_with_logits(fake - mu_other, 1.0)
        + _bce_with_logits(other - mu_fake, 0.0)
    )


def ragan_generator_loss(fake_pos: Tensor, mu_real_pos: Tensor, fake_neg: Tensor, mu_real_neg: Tensor) -> Tensor:
    """GANPO generator (policy) term ``L_adv`` (arXiv 2601.22083, §3).

    ``½ [BCE(D+(h_θ+) − μ+(r+), 1) + BCE(D−(h_θ−) − μ−(r−), 1)]``: the policy's chosen latents
    should score like the reference's chosen latents under D+, and its rejected latents like
    the reference's rejected latents under D−.
    """
    return 0.5 * (_bce_with_logits(fake_pos - mu_real_pos, 1.0) + _bce_with_logits(fake_neg - mu_real_neg, 1.0))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x [B, T, D]`` over the positions where ``mask [B, T]`` is true → ``[B, D]``.

    Rows with no selected position give 0 (callers drop such rows before they matter).
    """
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def rbf_mmd2(x: Tensor, y: Tensor, bandwidths: tuple[float, ...]) -> Tensor:
    """Biased squared maximum mean discrepancy with a sum of RBF kernels (Gretton et al., JMLR 2012).

    ``MMD² = mean k(x, x') + mean k(y, y') − 2 mean k(x, y)`` with
    ``k(a, b) = Σ_σ exp(−‖a − b‖² / (2σ²))``; ``x [N, D]``, ``y [M, D]``. Distances are taken
    relative to the mean squared distance of the pooled sample so the bandwidths are unitless.
    """
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    scale = d2.detach().mean().clamp_min(1e-12)
    k = sum(torch.exp(-d2 / (2 * s * s * scale)) for s in bandwidths)
    n = x.shape[0]
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def bradley_terry_loss(preferred_rewards: Tensor, other_rewards: Tensor) -> Tensor:
    """Per-pair Bradley–Terry loss ``−log σ(r(x, y_w) − r(x, y_l))`` (Bradley & Terry, 1952)."""
    return F.softplus(-(preferred_rewards - other_rewards))


def apo_rm_loss(
    preferred_rewards: Tensor,
    other_rewards: Tensor,
    is_apo: Tensor,
    c_human: float = 1.0,
    c_apo: float = 0.1,
    samples_per_prompt: int = 4,
) -> Tensor:
    """APO reward-model loss over a batch mixing human and APO pairs (arXiv 2311.08045, §4).

    ``L_RM = c_human · L_BT(human) + (c_apo / k) · L_BT(APO)`` where BT is
    :func:`bradley_terry_loss`, human pairs are (chosen, rejected), APO pairs are (golden
    response, sample of the current LLM) with the golden response preferred, and ``k`` is the
    number of samples per prompt. ``is_apo [N]`` flags the APO pairs.

    ``L_BT(APO)`` is the per-prompt SUM over the ``k`` samples, not a mean over APO pairs: each
    APO pair weighs ``c_apo / k``, so the ``k`` pairs of one prompt together weigh ``c_apo``,
    as one human pair weighs ``c_human``. This is the paper's ``c_apo · E_x E_{y~π}[BT]``
    (the mean over the ``k`` samples estimates the expectation over the LLM's samples) and
    the reference release's per-pair coefficient ``apo_loss_coeff / apo_sample_num``.

    The batch estimate is the release's: ``Σ_i w_i · BT_i / N`` with ``w_i = c_human`` for
    human pairs and ``c_apo / k`` for APO pairs, over all ``N`` pairs of the batch. Its
    expectation does not depend on the batch size or on how the pairs fall into batches (a
    mean per source would weigh a lone APO pair in a micro-batch of one like ``k`` of them).
    With every pair human and ``c_human = 1`` it is the plain Bradley–Terry mean.
    """
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1 (got {samples_per_prompt})")
    bt = bradley_terry_loss(preferred_rewards, other_rewards)
    is_apo = is_apo.to(device=bt.device, dtype=torch.bool)
    weights = torch.where(is_apo, torch.full_like(bt, c_apo / samples_per_prompt), torch.full_like(bt, c_human))
    # sum()/max(N, 1): an empty batch gives 0 with the graph kept instead of NaN
    return (weights * bt).sum() / max(bt.numel(), 1)


def lr_schedule_factor(kind: str, step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier after ``step`` scheduler steps (the schedules HF transformers
    names ``cosine``, ``linear`` and ``constant_with_warmup``). The scheduler steps after the
    optimiser, so the k-th optimiser step (k = 1, 2, …) uses ``factor(k − 1)``.

    Warm-up: ``step / warmup_steps`` while ``step < warmup_steps``. After it, with
    ``p = (step − warmup_steps) / (total_steps − warmup_steps)`` clipped to [0, 1]:
    cosine ``½ (1 + cos(π p))`` (Loshchilov & Hutter, SGDR, arXiv 1608.03983),
    linear ``1 − p``, constant ``1``.
    """
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        return 1.0 - progress
    if kind == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {kind!r}; known: cosine, linear, constant")
