"""Pure losses against values derived by hand (math module, not torch)."""

from __future__ import annotations

import math

import pytest
import torch

from ganpo_plugins.formulas.functional import (
    GPO_KINDS,
    gpo_loss,
    lr_schedule_factor,
    masked_mean,
    preference_logits,
    ragan_discriminator_loss,
    ragan_generator_loss,
    rbf_mmd2,
    simpo_loss,
)
from ganpo_plugins.formulas.preference import PairLogps, builtin_preference_losses, chosen_then_rejected

XS = [-2.0, -0.5, 0.0, 0.3, 1.0, 2.5]

HAND = {
    "logistic": lambda x: math.log(1 + math.exp(-x)),
    "hinge": lambda x: max(0.0, 1 - x),
    "squared": lambda x: (x - 1) ** 2,
    "exponential": lambda x: math.exp(-x),
    "truncated_quadratic": lambda x: max(0.0, 1 - x) ** 2,
    "savage": lambda x: 1 / (1 + math.exp(x)) ** 2,
}


@pytest.mark.parametrize("kind", sorted(HAND))
def test_gpo_loss_matches_hand_values(kind: str) -> None:
    x = torch.tensor(XS, dtype=torch.float64)
    expected = torch.tensor([HAND[kind](v) for v in XS], dtype=torch.float64)
    torch.testing.assert_close(gpo_loss(x, kind), expected)


def test_every_gpo_kind_has_a_hand_value() -> None:
    assert set(GPO_KINDS) == set(HAND)


@pytest.mark.parametrize("kind", sorted(GPO_KINDS))
def test_gpo_derivatives_at_zero_match_table(kind: str) -> None:
    x = torch.zeros((), dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(gpo_loss(x, kind), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1, x)
    assert d1.item() == pytest.approx(GPO_KINDS[kind].d1_at_0)
    assert d2.item() == pytest.approx(GPO_KINDS[kind].d2_at_0)


def test_regularization_strength_is_ratio_of_derivatives() -> None:
    assert GPO_KINDS["logistic"].regularization_strength == pytest.approx(0.5)
    assert GPO_KINDS["hinge"].regularization_strength == 0.0
    assert GPO_KINDS["savage"].regularization_strength == pytest.approx(0.5)


def test_unknown_gpo_kind_lists_known() -> None:
    with pytest.raises(ValueError, match="known kinds: logistic, hinge"):
        gpo_loss(torch.zeros(1), "sigmoid")


def test_preference_logits_is_beta_times_rho() -> None:
    # ρ = (−3 − −4) − (−5 − −4.5) = 1 + 0.5 = 1.5; β = 0.2 → 0.3
    out = preference_logits(torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.5]), 0.2)
    assert out.item() == pytest.approx(0.3)


def test_simpo_loss_hand_value() -> None:
    # β (mean+ − mean−) − γ = 2 (−1 − −1.5) − 0.5 = 0.5 → log(1 + e^−0.5)
    out = simpo_loss(torch.tensor([-1.0]), torch.tensor([-1.5]), beta=2.0, gamma=0.5)
    assert out.item() == pytest.approx(math.log1p(math.exp(-0.5)))


def _bce(z: float, t: float) -> float:
    p = 1 / (1 + math.exp(-z))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


RAGAN_CASES = [
    # real, fake, other (per example), mu_real, mu_fake, mu_other
    ([0.5, 1.0], [0.2, -0.1], [-0.7, 0.0], 0.6, 0.1, -0.3),
    ([2.0], [0.0], [-2.0], 0.0, 0.0, 0.0),
    ([-1.0, 0.3, 0.9], [0.4, 0.4, 0.4], [1.2, -0.8, 0.1], -0.2, 0.5, 0.05),
]


@pytest.mark.parametrize("real,fake,other,mr,mf,mo", RAGAN_CASES)
def test_ragan_discriminator_loss_hand_value(real, fake, other, mr, mf, mo) -> None:
    n = len(real)
    expected = 0.25 * (
        sum(_bce(r - mf, 1) for r in real) / n
        + sum(_bce(f - mr, 0) for f in fake) / n
        + sum(_bce(f - mo, 1) for f in fake) / n
        + sum(_bce(o - mf, 0) for o in other) / n
    )
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    out = ragan_discriminator_loss(t(real), t(fake), t(other), t(mr), t(mf), t(mo))
    assert out.item() == pytest.approx(expected)


@pytest.mark.parametrize(
    "fake_pos,mu_pos,fake_neg,mu_neg", [([0.1, -0.4], 0.3, [1.0, 0.2], -0.5), ([0.0], 0.0, [0.0], 0.0)]
)
def test_ragan_generator_loss_hand_value(fake_pos, mu_pos, fake_neg, mu_neg) -> None:
    n = len(fake_pos)
    expected = 0.5 * (sum(_bce(f - mu_pos, 1) for f in fake_pos) / n + sum(_bce(f - mu_neg, 1) for f in fake_neg) / n)
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    assert ragan_generator_loss(t(fake_pos), t(mu_pos), t(fake_neg), t(mu_neg)).item() == pytest.approx(expected)


def test_masked_mean_ignores_masked_positions_and_empty_rows() -> None:
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[5.0], [7.0], [9.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor([[2.0], [0.0]]))


def test_rbf_mmd2_zero_for_identical_samples_positive_otherwise() -> None:
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    assert rbf_mmd2(x, x.clone(), (1.0,)).item() == pytest.approx(0.0, abs=1e-6)
    assert rbf_mmd2(x, x + 3.0, (1.0,)).item() > 0.1


def test_rbf_mmd2_hand_value_two_points() -> None:
    # x = {0}, y = {1} in 1-D: d² matrix [[0,1],[1,0]], scale = mean(d²) = 0.5, σ = 1:
    # k_xy = exp(−1 / (2·0.5)) = e^−1; MMD² = 1 + 1 − 2 e^−1.
    out = rbf_mmd2(torch.tensor([[0.0]]), torch.tensor([[1.0]]), (1.0,))
    assert out.item() == pytest.approx(2 - 2 * math.exp(-1), rel=1e-5)


@pytest.mark.parametrize(
    "kind,step,expected",
    [
        ("cosine", 0, 0.0),
        ("cosine", 5, 0.5),
        ("cosine", 10, 1.0),
        ("cosine", 55, 0.5),
        ("cosine", 100, 0.0),
        ("linear", 55, 0.5),
        ("constant", 90, 1.0),
    ],
)
def test_lr_schedule_factor(kind: str, step: int, expected: float) -> None:
    assert lr_schedule_factor(kind, step, warmup_steps=10, total_steps=100) == pytest.approx(expected, abs=1e-12)


def test_preference_registry_entries_match_functional() -> None:
    losses = builtin_preference_losses()
    lp = PairLogps(
        policy_chosen=torch.tensor([-3.0]),
        policy_rejected=torch.tensor([-5.0]),
        ref_chosen=torch.tensor([-4.0]),
        ref_rejected=torch.tensor([-4.5]),
        chosen_lengths=torch.tensor([3]),
        rejected_lengths=torch.tensor([5]),
    )
    x = 0.1 * 1.5
    for kind, f in HAND.items():
        assert losses[kind](lp, beta=0.1).item() == pytest.approx(f(x))
    # SimPO: means −1 and −1 → −log σ(−γ)
    assert losses["simpo"](lp, beta=2.0, gamma=0.5).item() == pytest.approx(math.log1p(math.exp(0.5)))
    assert losses["simpo"].reference_free
    with pytest.raises(ValueError, match="needs reference"):
        losses["logistic"](PairLogps(torch.zeros(1), torch.zeros(1)), beta=0.1)
    with pytest.raises(ValueError, match="simpo_gamma"):
        losses["simpo"](lp, beta=2.0)


def test_pair_from_concatenated_takes_chosen_first_then_rejected() -> None:
    pair = PairLogps.from_concatenated(torch.tensor([1.0, 2.0, 3.0, 4.0]), None, torch.tensor([5, 6, 7, 8]))
    assert pair.policy_chosen.tolist() == [1.0, 2.0] and pair.policy_rejected.tolist() == [3.0, 4.0]
    assert pair.ref_chosen is None and pair.rejected_lengths.tolist() == [7, 8]


def test_two_samples_per_prompt_are_ordered_chosen_then_rejected() -> None:
    # samples 0..2 (first) vs 3..5 (second): 1 ≥ 0, 0 < 1, 2 ≥ 2 (a tie: the first sample is chosen)
    first, second = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0])
    assert chosen_then_rejected(first >= second).tolist() == [0, 4, 2, 3, 1, 5]


def test_losses_return_the_implicit_rewards() -> None:
    losses = builtin_preference_losses()
    # DPO: β(log π − log π_ref); β = 0.5, ρ = (−1 − (−3)) − (−2 − (−2)) = 2, logistic: log(1 + e^(−1))
    pair = PairLogps(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-3.0]), torch.tensor([-2.0]))
    loss, chosen, rejected = losses["logistic"].loss_and_rewards(pair, 0.5)
    assert chosen.item() == pytest.approx(1.0) and rejected.item() == pytest.approx(0.0)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)))
    # SimPO: β · mean log π; −6 over 3 tokens, −4 over 2; β = 2, γ = 0.5: z = 2(−2 − (−2)) − 0.5
    lengths = (torch.tensor([3]), torch.tensor([2]))
    pair = PairLogps(torch.tensor([-6.0]), torch.tensor([-4.0]), None, None, *lengths)
    loss, chosen, rejected = losses["simpo"].loss_and_rewards(pair, 2.0, 0.5)
    assert chosen.item() == pytest.approx(-4.0) and rejected.item() == pytest.approx(-4.0)
    assert loss.item() == pytest.approx(math.log1p(math.exp(0.5)))
    assert not chosen.requires_grad
