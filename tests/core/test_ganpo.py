"""GANPORegularizer behaviour: gradient isolation, EMA, accumulation, faults, state, RNG."""

from __future__ import annotations

import copy

import pytest
import torch
from latents import H, disc_params, make_batch, make_config, make_regularizer

from ganpo_plugins import GANPORegularizer, LatentBatch, RegularizerContext, StepInfo
from ganpo_plugins.formulas.discriminators import compact_positions, pad_and_stack


def test_from_concatenated_splits_chosen_then_rejected() -> None:
    policy = torch.arange(4.0).view(4, 1, 1).expand(4, 2, H)
    batch = LatentBatch.from_concatenated(policy, -policy, torch.ones(4, 2), torch.ones(4, 2))
    assert batch.policy_chosen[:, 0, 0].tolist() == [0.0, 1.0]
    assert batch.ref_rejected[:, 0, 0].tolist() == [-2.0, -3.0]
    assert batch.attention_chosen.dtype == torch.bool
    with pytest.raises(ValueError, match="stacked on dim 0"):
        LatentBatch.from_concatenated(policy[:3], policy[:3], torch.ones(3, 2), torch.ones(3, 2))


def test_update_trains_only_discriminators() -> None:
    reg = make_regularizer(optimizer={"warmup_steps": 0})  # with warm-up the first step's lr is 0
    batch = make_batch(0)
    before = disc_params(reg)
    reg.update(batch, StepInfo(is_boundary=True))
    assert batch.policy_chosen.grad is None and batch.policy_rejected.grad is None
    assert any(not torch.equal(a, b) for a, b in zip(before, disc_params(reg), strict=True))
    assert all(p.grad is None for p in reg.discriminators.parameters())  # zeroed after the step


def test_policy_term_reaches_policy_only_through_latents() -> None:
    reg = make_regularizer()
    batch = make_batch(0)
    reg.update(make_batch(1, requires_grad=False), StepInfo())
    before = disc_params(reg)
    out = reg.policy_term(batch)
    out.loss.backward()
    assert all(p.grad is None for p in reg.discriminators.parameters())
    assert all(p.requires_grad for p in reg.discriminators.parameters())  # restored
    assert all(torch.equal(a, b) for a, b in zip(before, disc_params(reg), strict=True))
    chosen_grad = batch.policy_chosen.grad
    assert chosen_grad[:, 3:].abs().sum() > 0  # response positions
    assert chosen_grad[:, :3].abs().sum() == 0  # prompt positions are not seen with mask=response
    assert batch.policy_rejected.grad[:, 3:].abs().sum() > 0


def test_policy_term_is_weighted_and_zero_weight_gives_zero_gradient() -> None:
    reg = make_regularizer(weight=2.5)
    batch = make_batch(0)
    reg.update(make_batch(1, requires_grad=False), StepInfo())
    out = reg.policy_term(batch)
    assert out.loss.item() == pytest.approx(2.5 * out.metrics["adv_loss"], rel=1e-6)
    reg0 = make_regularizer(weight=0.0)
    batch0 = make_batch(0)
    reg0.policy_term(batch0).loss.backward()
    assert batch0.policy_chosen.grad.abs().sum() == 0


def _batch_means(reg: GANPORegularizer, batch: LatentBatch) -> torch.Tensor:
    """The six batch-mean scores, recomputed by hand on a copy of the discriminators."""
    discs = copy.deepcopy(reg.discriminators).train()
    mask_c, mask_r = batch.positions(reg.mask)
    rc, pc, rr, pr = (
        compact_positions(h.detach(), m, 2048)
        for h, m in (
            (batch.ref_chosen, mask_c),
            (batch.policy_chosen, mask_c),
            (batch.ref_rejected, mask_r),
            (batch.policy_rejected, mask_r),
        )
    )
    rows = []
    for side, parts in (("pos", (rc, pc, rr)), ("neg", (rr, pr, rc))):
        hidden, mask = pad_and_stack(list(parts))
        rows.append(torch.stack([s.mean() for s in discs[side](hidden, mask).chunk(3)]))
    return torch.stack(rows).detach()


def test_ema_initialises_from_first_batch_then_moves_with_momentum() -> None:
    reg = make_regularizer(discriminator={"dropout": 0.0}, ema_momentum=0.9)
    b1, b2 = make_batch(0), make_batch(1)
    m1 = _batch_means(reg, b1)
    reg.update(b1, StepInfo(is_boundary=False, accumulation_steps=2))
    torch.testing.assert_close(reg.mu, m1)
    m2 = _batch_means(reg, b2)
    reg.update(b2, StepInfo(is_boundary=True, accumulation_steps=2))
    torch.testing.assert_close(reg.mu, 0.9 * m1 + 0.1 * m2)


def test_accumulation_steps_once_with_mean_gradient() -> None:
    """Two micro-steps of one batch with accumulation 2 accumulate the gradient of one micro-step
    with accumulation 1, and the optimiser steps once, at the boundary.

    The two paths differ in the last float bits (μ is re-averaged on the second micro-step, sums
    run in another order), and by how much depends on the CPU: the gradients are compared with a
    tolerance before the optimiser step, since AdamW turns ~1e-9 differences near zero into full
    lr-sized steps."""
    cfg = {"discriminator": {"dropout": 0.0, "spectral_norm": False}}
    batch = make_batch(0)
    accumulated, single = make_regularizer(**cfg), make_regularizer(**cfg)
    for _ in range(2):
        accumulated.update(batch, StepInfo(is_boundary=False, accumulation_steps=2))
    single.update(batch, StepInfo(is_boundary=False, accumulation_steps=1))
    assert accumulated.disc_steps == single.disc_steps == 0
    grads = [
        (a.grad, b.grad)
        for a, b in zip(accumulated.discriminators.parameters(), single.discriminators.parameters(), strict=True)
    ]
    assert all(b is not None for _, b in grads) and any(b.abs().sum() > 0 for _, b in grads)
    for a, b in grads:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(accumulated.mu, single.mu, rtol=1e-5, atol=1e-6)

    accumulated.update(batch, StepInfo(is_boundary=True, accumulation_steps=2))
    assert accumulated.disc_steps == 1
    assert all(p.grad is None for p in accumulated.discriminators.parameters())
    states = [s for opt in accumulated.optimizers.values() for s in opt.state.values()]
    assert states and all(int(s["step"]) == 1 for s in states)


def test_update_ratio_takes_extra_steps() -> None:
    reg = make_regularizer(optimizer={"update_ratio": 3})
    reg.update(make_batch(0), StepInfo())
    assert reg.disc_steps == 3


def test_learning_rate_follows_schedule_from_policy_lr() -> None:
    reg = make_regularizer()  # policy lr 2e-3 → 1e-3, warm-up 2 of 20 steps, cosine
    assert reg.optimizers["pos"].param_groups[0]["lr"] == 0.0
    reg.update(make_batch(0), StepInfo())
    assert reg.optimizers["pos"].param_groups[0]["lr"] == pytest.approx(0.5e-3)
    reg.update(make_batch(1), StepInfo())
    reg.update(make_batch(2), StepInfo())
    # step 3: progress (3 − 2) / 18 → ½ (1 + cos(π/18))
    import math

    assert reg.optimizers["neg"].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 18)))


@pytest.mark.parametrize("mode", ["response", "sequence", "none"])
def test_mask_modes_select_positions(mode: str) -> None:
    batch = make_batch(0)
    chosen, _ = batch.positions(mode)
    if mode == "response":
        assert chosen[1].tolist() == [False] * 3 + [True] * 4
        assert chosen[0].tolist() == [False] * 3 + [True, True, False, False]
    elif mode == "sequence":
        assert chosen[0].tolist() == [True] * 5 + [False] * 2
    else:
        assert chosen.all()
    reg = make_regularizer(mask=mode)
    b = make_batch(0)
    reg.policy_term(b).loss.backward()
    seen = b.policy_chosen.grad.abs().sum(-1) > 0
    assert torch.equal(seen, chosen[: seen.shape[0]])


def test_low_precision_inputs_are_scored_in_fp32() -> None:
    reg = make_regularizer()
    b = make_batch(0)
    half = LatentBatch(*(t.to(torch.bfloat16) if t.is_floating_point() else t for t in b.__dict__.values()))
    metrics = reg.update(half, StepInfo())
    assert metrics["skipped"] == 0.0
    out = reg.policy_term(half)
    assert out.loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in reg.discriminators.parameters())


def test_host_rng_is_untouched() -> None:
    reg = make_regularizer()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    reg.update(make_batch(0), StepInfo())
    reg.policy_term(make_batch(1))
    assert torch.equal(torch.get_rng_state(), state)


def test_initialisation_depends_on_seed_only() -> None:
    torch.manual_seed(1)
    a = make_regularizer()
    torch.manual_seed(2)
    b = make_regularizer()
    c = make_regularizer(seed=7)
    assert all(torch.equal(x, y) for x, y in zip(disc_params(a), disc_params(b), strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(disc_params(a), disc_params(c), strict=True))


def test_state_round_trip_continues_identically(tmp_path) -> None:
    """Dropout on: the saved RNG stream must continue exactly too."""
    reg = make_regularizer()
    for s in range(3):
        reg.update(make_batch(s), StepInfo())
    torch.save(reg.state_dict(), tmp_path / "state.pt")
    for s in range(3, 6):
        reg.update(make_batch(s), StepInfo())
    expected = reg.state_dict()

    resumed = make_regularizer()
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for s in range(3, 6):
        resumed.update(make_batch(s), StepInfo())
    got = resumed.state_dict()
    for key in ("mu", "cpu_rng"):
        assert torch.equal(got[key], expected[key]), key
    for k, v in expected["discriminators"].items():
        assert torch.equal(got["discriminators"][k], v), k
    for side in ("pos", "neg"):
        for pid, st in expected["optimizers"][side]["state"].items():
            for name, value in st.items():
                assert torch.equal(torch.as_tensor(got["optimizers"][side]["state"][pid][name]), torch.as_tensor(value))
    assert got["disc_steps"] == expected["disc_steps"] == 6


def test_different_hidden_sizes_are_refused() -> None:
    ctx = RegularizerContext(hidden_size=H, ref_hidden_size=H * 2, policy_lr=1e-3, total_steps=10)
    with pytest.raises(ValueError, match="differs from reference hidden size"):
        GANPORegularizer(make_config(), ctx)
