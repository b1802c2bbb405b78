"""Fault injection: a bad step is skipped for the regularizer, counted, warned about once;
training goes on and the discriminators and μ stay finite."""

from __future__ import annotations

import warnings

import pytest
import torch
from latents import disc_params, make_batch, make_regularizer

from ganpo_plugins import GANPORegularizer, LatentBatch, StepInfo


def _replace(batch: LatentBatch, **fields) -> LatentBatch:
    return LatentBatch(**{**batch.__dict__, **fields})


def _poison(field: str, value: float, where=(1, 4)):
    def make(batch: LatentBatch) -> LatentBatch:
        tensor = getattr(batch, field).detach().clone()
        tensor[where] = value
        return _replace(batch, **{field: tensor.requires_grad_(field.startswith("policy"))})

    return make


FAULTS = {
    "nan_policy_chosen": _poison("policy_chosen", float("nan")),
    "inf_policy_rejected": _poison("policy_rejected", float("inf")),
    "nan_reference_rejected": _poison("ref_rejected", float("nan")),
    "neg_inf_reference_chosen": _poison("ref_chosen", float("-inf")),
    "all_responses_empty": lambda b: _replace(
        b, response_chosen=torch.zeros_like(b.response_chosen), response_rejected=torch.zeros_like(b.response_rejected)
    ),
    "bf16_overflowing_fp32": lambda b: _replace(
        b, policy_chosen=(b.policy_chosen.detach() * 1e30).to(torch.bfloat16).requires_grad_(True)
    ),
}


def _assert_finite(reg: GANPORegularizer) -> None:
    assert torch.isfinite(reg.mu).all()
    assert all(torch.isfinite(p).all() for p in reg.discriminators.parameters())


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_bad_step_is_skipped_and_training_goes_on(fault: str) -> None:
    reg = make_regularizer()
    reg.update(make_batch(0), StepInfo())
    before, mu, steps = disc_params(reg), reg.mu.clone(), reg.disc_steps
    bad = FAULTS[fault](make_batch(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = reg.update(bad, StepInfo())
        out = reg.policy_term(bad)
        reg.update(bad, StepInfo())
    assert metrics["skipped"] == 1.0
    assert out.loss.item() == 0.0 and not out.loss.requires_grad and out.metrics["term_skipped"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, disc_params(reg), strict=True))
    torch.testing.assert_close(reg.mu, mu)
    assert reg.disc_steps == steps and reg.skipped_updates == 2
    assert len({str(w.message) for w in caught}) == 1, [str(w.message) for w in caught]  # warned once
    _assert_finite(reg)
    # the next good batch trains again
    metrics = reg.update(make_batch(2), StepInfo())
    assert metrics["skipped"] == 0.0 and reg.disc_steps == steps + 1
    assert any(not torch.equal(a, b) for a, b in zip(before, disc_params(reg), strict=True))
    _assert_finite(reg)


def test_non_finite_values_at_unseen_positions_are_harmless() -> None:
    reg = make_regularizer()  # mask: response (positions 3:)
    bad = _poison("policy_chosen", float("nan"), where=(1, 0))(make_batch(1))  # a prompt position
    assert reg.update(bad, StepInfo())["skipped"] == 0.0
    out = reg.policy_term(bad)
    assert torch.isfinite(out.loss) and out.metrics["term_skipped"] == 0.0
    _assert_finite(reg)


def test_rows_with_empty_response_are_dropped_not_poisoning() -> None:
    reg = make_regularizer()
    b = make_batch(0)
    response_c = b.response_chosen.clone()
    response_c[0] = False
    batch = _replace(b, response_chosen=response_c)
    assert reg.update(batch, StepInfo())["skipped"] == 0.0
    out = reg.policy_term(batch)
    out.loss.backward()
    assert batch.policy_chosen.grad[0].abs().sum() == 0 and batch.policy_rejected.grad[0].abs().sum() == 0
    assert batch.policy_chosen.grad[1].abs().sum() > 0
    _assert_finite(reg)


def test_fp16_latents_near_the_fp16_limit_are_scored() -> None:
    reg = make_regularizer()
    b = make_batch(0)
    big = {f: (getattr(b, f).detach() * 2e4).clamp(-6e4, 6e4).half() for f in ("policy_chosen", "ref_chosen")}
    batch = _replace(b, **big)
    assert reg.update(batch, StepInfo())["skipped"] == 0.0
    assert torch.isfinite(reg.policy_term(batch).loss)
    _assert_finite(reg)


def test_non_finite_gradients_skip_the_optimiser_step() -> None:
    reg = make_regularizer()
    reg.update(make_batch(0), StepInfo())
    before = disc_params(reg)
    first = next(reg.discriminators["pos"].parameters())
    handle = first.register_hook(lambda g: torch.full_like(g, float("nan")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg.update(make_batch(1), StepInfo())
    handle.remove()
    assert any("non-finite discriminator gradients" in str(w.message) for w in caught)
    assert all(torch.equal(a, b) for a, b in zip(before, disc_params(reg), strict=True))
    assert all(p.grad is None for p in reg.discriminators.parameters())
    reg.update(make_batch(2), StepInfo())
    _assert_finite(reg)


def test_saturation_warning_fires_on_constructed_case_only() -> None:
    """Policy latents equal to the reference: D cannot separate real from fake, its accuracy
    stays at the floor → warning after `patience` steps. Distinct latents: no warning."""
    reg = make_regularizer(saturation_patience=3, discriminator={"dropout": 0.0})
    b = make_batch(0)
    same = b.ref_chosen[:1, :1].expand_as(b.ref_chosen)  # every latent identical: nothing to tell apart
    identical = _replace(b, policy_chosen=same, policy_rejected=same, ref_chosen=same, ref_rejected=same)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            metrics = reg.update(identical, StepInfo())
    assert metrics["d_pos/saturated_steps"] >= 3 and metrics["d_pos/accuracy"] <= 0.51
    assert sum("has stayed saturated" in str(w.message) for w in caught) == 2  # once per discriminator

    # Distinguishable latents: reference chosen/rejected shifted apart, policy in between.
    healthy = make_regularizer(saturation_patience=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for s in range(10):
            b = make_batch(s)
            shifted = _replace(
                b,
                policy_chosen=b.policy_chosen.detach() * 0.5 + 0.3,
                policy_rejected=b.policy_rejected.detach() * 0.5 - 0.3,
                ref_chosen=b.ref_chosen + 1.0,
                ref_rejected=b.ref_rejected - 1.0,
            )
            metrics = healthy.update(shifted, StepInfo())
    assert not any("saturated" in str(w.message) for w in caught)
    assert 0.51 < metrics["d_pos/accuracy"] < 0.99
