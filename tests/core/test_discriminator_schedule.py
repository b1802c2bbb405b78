"""The discriminators' lr schedule follows the policy's (Hugging Face Trainer order: optimiser
step, then scheduler step), so the k-th discriminator step uses ``base · factor(k − 1)``.

Expected values are derived by hand from the Hugging Face formulas (warm-up ``s / w`` for
``s < w``; then with ``p = (s − w) / (N − w)``: cosine ``½ (1 + cos πp)``, linear ``1 − p``,
constant ``1``), here with w = 2 warm-up steps of N = 20 and base lr 1e-4.
"""

from __future__ import annotations

import math

import pytest
import torch
from latents import H, make_batch, make_config

from ganpo_plugins import GANPORegularizer, RegularizerContext, StepInfo
from ganpo_plugins.formulas.functional import lr_schedule_factor

BASE_LR = 1e-4  # policy lr 2e-4 × lr_ratio ½

# lr of the discriminator steps taken at policy optimiser steps 1..5:
# factors s/w = 0, ½, then p = 0 → 1, p = 1/18, p = 2/18.
EXPECTED = {
    "cosine": [0.0, 0.5e-4, 1e-4, 1e-4 * 0.5 * (1 + math.cos(math.pi / 18)), 1e-4 * 0.5 * (1 + math.cos(math.pi / 9))],
    "linear": [0.0, 0.5e-4, 1e-4, 1e-4 * 17 / 18, 1e-4 * 16 / 18],
    "constant": [0.0, 0.5e-4, 1e-4, 1e-4, 1e-4],
}


def _regularizer(scheduler: str, update_ratio: int = 1) -> GANPORegularizer:
    ctx = RegularizerContext(hidden_size=H, policy_lr=2 * BASE_LR, total_steps=20, warmup_steps=2, seed=0)
    config = make_config(optimizer={"scheduler": scheduler, "update_ratio": update_ratio})
    return GANPORegularizer(config, ctx)


def _record_step_lrs(reg: GANPORegularizer) -> dict[str, list[float]]:
    """The lr each discriminator optimiser holds when its ``step()`` runs."""
    seen: dict[str, list[float]] = {"pos": [], "neg": []}
    for side, optimizer in reg.optimizers.items():
        optimizer.register_step_pre_hook(
            lambda opt, args, kwargs, side=side: seen[side].append(opt.param_groups[0]["lr"])
        )
    return seen


def test_hand_derived_factors_match_lr_schedule_factor() -> None:
    for scheduler, lrs in EXPECTED.items():
        got = [BASE_LR * lr_schedule_factor(scheduler, k, 2, 20) for k in range(5)]
        assert got == pytest.approx(lrs, rel=1e-12, abs=0.0), scheduler
    # the release's measured cosine lrs (base 1e-4): 0, 5e-5, 1e-4, 9.92e-5, 9.70e-5
    assert [round(x, 7) for x in EXPECTED["cosine"]] == [0.0, 5e-5, 1e-4, 9.92e-5, 9.70e-5]


@pytest.mark.parametrize("scheduler", ["cosine", "linear", "constant"])
def test_kth_discriminator_step_uses_the_policy_lr_of_step_k(scheduler: str) -> None:
    reg = _regularizer(scheduler)
    seen = _record_step_lrs(reg)
    for step in range(5):
        reg.update(make_batch(step), StepInfo())
    assert seen["pos"] == pytest.approx(EXPECTED[scheduler], rel=1e-12, abs=0.0)
    assert seen["neg"] == seen["pos"]
    # After the 5th step the optimiser holds the lr of the 6th, as the policy's scheduler does.
    assert reg.optimizers["pos"].param_groups[0]["lr"] == pytest.approx(
        BASE_LR * lr_schedule_factor(scheduler, 5, 2, 20)
    )


def test_extra_discriminator_steps_share_their_policy_step_lr() -> None:
    reg = _regularizer("cosine", update_ratio=3)
    seen = _record_step_lrs(reg)
    for step in range(4):
        reg.update(make_batch(step), StepInfo())
    assert reg.disc_steps == 12 and reg.policy_steps == 4
    expected = [lr for lr in EXPECTED["cosine"][:4] for _ in range(3)]
    assert seen["pos"] == pytest.approx(expected, rel=1e-12, abs=0.0)


def test_accumulation_advances_the_schedule_once_per_policy_step() -> None:
    reg = _regularizer("linear")
    seen = _record_step_lrs(reg)
    for micro_step in range(1, 11):
        reg.update(make_batch(micro_step), StepInfo(is_boundary=micro_step % 2 == 0, accumulation_steps=2))
        assert reg.policy_steps == micro_step // 2
    assert seen["pos"] == pytest.approx(EXPECTED["linear"], rel=1e-12, abs=0.0)


def test_cosine_reaches_zero_at_the_end_and_stays_there() -> None:
    reg = _regularizer("cosine")
    seen = _record_step_lrs(reg)
    for step in range(21):
        reg.update(make_batch(step % 3), StepInfo())
    # step 20 uses p = 17/18; step 21 (past the end) p = 1 → 0
    assert seen["pos"][19] == pytest.approx(1e-4 * 0.5 * (1 + math.cos(17 * math.pi / 18)), rel=1e-12)
    assert seen["pos"][20] == pytest.approx(0.0, abs=1e-20)


def test_first_step_in_warm_up_leaves_the_discriminators_unchanged() -> None:
    """lr 0 at the first step (as the policy's): AdamW moves nothing, weight decay included."""
    reg = _regularizer("cosine")
    before = [p.detach().clone() for p in reg.discriminators.parameters()]
    reg.update(make_batch(0), StepInfo())
    assert reg.disc_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, reg.discriminators.parameters(), strict=True))


def test_resumed_state_keeps_the_schedule(tmp_path) -> None:
    reg = _regularizer("cosine")
    for step in range(3):
        reg.update(make_batch(step), StepInfo())
    torch.save(reg.state_dict(), tmp_path / "state.pt")
    resumed = _regularizer("cosine")
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    seen = _record_step_lrs(resumed)
    for step in range(3, 5):
        resumed.update(make_batch(step), StepInfo())
    assert seen["pos"] == pytest.approx(EXPECTED["cosine"][3:], rel=1e-12, abs=0.0)
