"""Unpaired latent batches (online RL: GRPO, RLOO; docs/methods.md "GANPO for group-based online RL"):
sides of different sizes built from advantages, GANPO's losses on them against the formula with each
batch mean over its own side, and a side left empty (every advantage of one sign, or zero)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from latents import H, make_batch, make_regularizer

from ganpo_plugins import LatentBatch, RegularizerContext, RegularizerRunner, StepInfo, UnpairedLatentBatch


def _host_tensors(n: int = 6, t: int = 5, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    policy, ref = torch.randn(n, t, H, generator=g), torch.randn(n, t, H, generator=g)
    attention = torch.ones(n, t, dtype=torch.bool)
    response = torch.zeros(n, t, dtype=torch.bool)
    response[:, 2:] = True
    return policy, ref, attention, response


def test_from_sides_selects_the_rows_of_each_side() -> None:
    policy, ref, attention, response = _host_tensors()
    advantages = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.3, -0.1])
    batch = LatentBatch.from_sides(policy, ref, attention, response, advantages > 0, advantages < 0)
    assert torch.equal(batch.policy_chosen, policy[[0, 3, 4]]) and torch.equal(batch.ref_rejected, ref[[1, 5]])
    assert batch.side_rows("response") == (3, 2) and not batch.has_empty_side("response")
    # A row with no response token joins no side under mask=response, but does under mask=sequence.
    response[1] = False
    batch = LatentBatch.from_sides(policy, ref, attention, response, advantages > 0, advantages < 0)
    assert batch.side_rows("response") == (3, 1) and batch.side_rows("sequence") == (3, 2)


def test_from_sides_refuses_overlapping_or_misshaped_sides() -> None:
    policy, ref, attention, response = _host_tensors()
    rows = torch.ones(6, dtype=torch.bool)
    with pytest.raises(ValueError, match="overlap"):
        LatentBatch.from_sides(policy, ref, attention, response, rows, rows)
    with pytest.raises(ValueError, match=r"chosen must be a bool mask of shape \[6\]"):
        LatentBatch.from_sides(policy, ref, attention, response, rows[:4], ~rows)


def test_ganpo_losses_on_sides_of_different_sizes_match_the_formula() -> None:
    """L_D± and L_adv with every batch mean over its own side: the discriminator scores each side's
    rows alone, μ is the mean over that side, and BCE averages over that side's rows."""
    reg = make_regularizer()
    assert not reg.mu_initialized  # the first batch sets μ to its own batch means: the formula below is exact
    batch = make_batch(0, b=3, b_rejected=1, requires_grad=False)
    twin = copy.deepcopy(reg)  # a train-mode forward advances spectral norm's power iteration: score on a twin
    parts, usable = twin._select(batch)
    assert usable and [h.shape[0] for h, _ in parts] == [3, 3, 1, 1]
    with torch.random.fork_rng():
        torch.set_rng_state(twin._cpu_rng)  # the scores below use the dropout draws the update will use
        twin.discriminators.train()
        scores = twin._scores(parts)
    expected_mu = torch.stack([torch.stack([s.mean() for s in scores[side]]) for side in ("pos", "neg")])

    def bce(z: torch.Tensor, target: float) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(z, torch.full_like(z, target))

    expected = 0.0
    for i, side in enumerate(("pos", "neg")):
        real, fake, other = scores[side]
        assert (real.shape[0], fake.shape[0], other.shape[0]) == ((3, 3, 1) if side == "pos" else (1, 1, 3))
        mu_real, mu_fake, mu_other = expected_mu[i]
        expected = expected + 0.25 * (
            bce(real - mu_fake, 1) + bce(fake - mu_real, 0) + bce(fake - mu_other, 1) + bce(other - mu_fake, 0)
        )
    reg.discriminators.train()
    with torch.random.fork_rng():
        torch.set_rng_state(reg._cpu_rng)
        loss, _ = reg.discriminator_loss(batch)
    assert torch.allclose(reg.mu, expected_mu.detach()) and loss.item() == pytest.approx(expected.item(), rel=1e-6)

    # L_adv = ½ [BCE(D+(h_θ+) − μ+(r+), 1) + BCE(D−(h_θ−) − μ−(r−), 1)], D± in eval mode, each over its side.
    term = make_batch(1, b=2, b_rejected=4)
    out = reg.policy_term(term)
    parts, _ = reg._select(term)
    reg.discriminators.eval()  # eval mode: no dropout, no power iteration
    with torch.no_grad():
        fake_pos, fake_neg = reg.discriminators["pos"](*parts[1]), reg.discriminators["neg"](*parts[3])
    adv = 0.5 * (bce(fake_pos - reg.mu[0, 0], 1) + bce(fake_neg - reg.mu[1, 0], 1))
    assert fake_pos.shape == (2,) and fake_neg.shape == (4,)
    assert out.loss.item() == pytest.approx(reg.weight * adv.item(), rel=1e-6)
    out.loss.backward()
    assert term.policy_chosen.grad.abs().sum() > 0 and term.policy_rejected.grad.abs().sum() > 0


def _empty_side_batch(side: str) -> LatentBatch:
    policy, ref, attention, response = _host_tensors(n=4)
    everything, nothing = torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)
    chosen, rejected = {"rejected": (everything, nothing), "chosen": (nothing, everything), "both": (nothing, nothing)}[
        side
    ]
    return LatentBatch.from_sides(policy.requires_grad_(), ref, attention, response, chosen, rejected)


@pytest.mark.parametrize("side", ["rejected", "chosen", "both"])
def test_an_empty_side_gives_no_discriminator_step_no_term_and_no_nan(side: str, recwarn) -> None:
    ctx = RegularizerContext(hidden_size=H, policy_lr=2e-3, total_steps=20, warmup_steps=0, seed=0)
    small = {"discriminator": {"d_model": 16, "num_heads": 2, "ffn_size": 32, "num_layers": 1}}
    runner = RegularizerRunner(small, ctx)
    reg = runner.regularizer
    runner.step(make_batch(0, requires_grad=False), StepInfo(is_boundary=True))  # μ initialised, one step
    mu, params = reg.mu.clone(), [p.detach().clone() for p in reg.discriminators.parameters()]
    runner.pop_metrics()
    batch = _empty_side_batch(side)
    loss = runner.step(batch, StepInfo(is_boundary=True))
    assert loss.item() == 0.0 and not loss.requires_grad
    metrics = runner.pop_metrics()
    assert metrics["ganpo/skipped"] == 1.0 and metrics["ganpo/term_skipped"] == 1.0
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    # Nothing learned at a boundary with no contributing micro-batch: weights, μ and the step count stay.
    assert torch.equal(reg.mu, mu) and reg.disc_steps == 1 and reg.skipped_updates == 1
    assert all(torch.equal(a, b) for a, b in zip(params, reg.discriminators.parameters(), strict=True))
    with torch.no_grad():
        assert runner.step(batch, None).item() == 0.0  # evaluation too
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_an_empty_side_inside_an_accumulation_window_still_lets_the_boundary_step() -> None:
    """The window's other micro-batch contributed gradients: the optimiser steps once, at the boundary,
    on that micro-batch's gradient divided by the accumulation steps as always."""
    reg = make_regularizer()
    reg.update(make_batch(0, requires_grad=False), StepInfo(is_boundary=False, accumulation_steps=2))
    metrics = reg.update(_empty_side_batch("rejected"), StepInfo(is_boundary=True, accumulation_steps=2))
    assert metrics["skipped"] == 1.0 and reg.disc_steps == 1 and reg.policy_steps == 1


def test_sides_of_different_sizes_must_be_built_unpaired() -> None:
    b = make_batch(0, b=3, b_rejected=2)
    assert not b.paired
    with pytest.raises(
        ValueError, match=r"sides of different sizes are unpaired: build them with LatentBatch\.from_sides"
    ):
        LatentBatch(*(getattr(b, f.name) for f in dataclasses.fields(b)))


def test_a_row_without_positions_leaves_its_own_side_only_when_unpaired() -> None:
    """Paired (offline DPO): the whole pair goes. Unpaired: only that row; the other side keeps its row."""
    reg = make_regularizer()
    paired = make_batch(0)
    response = paired.response_chosen.clone()
    response[0] = False
    paired = dataclasses.replace(paired, response_chosen=response)
    unpaired = UnpairedLatentBatch(*(getattr(paired, f.name) for f in dataclasses.fields(paired)))
    assert [h.shape[0] for h, _ in reg._select(paired)[0]] == [2, 2, 2, 2]
    assert [h.shape[0] for h, _ in reg._select(unpaired)[0]] == [2, 2, 3, 3]
