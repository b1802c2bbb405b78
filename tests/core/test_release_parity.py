"""Parity with the public GANPO release, re-derived in plain PyTorch from the method (not from
the release's code): training steps the way the release runs them, against GANPORegularizer
in ``mask: none``.

Release-style step (one micro-step):
- discriminators in train mode score detached latents in six separate forwards on the full
  padded sequences, no mask (D+: h_θ+, h_r+, h_r−; D−: h_θ−, h_r+, h_r−, in that order);
- legacy spectral norm: every train-mode forward runs one power iteration v ← Wᵀu/‖Wᵀu‖,
  then u ← Wv/‖Wv‖, and divides W by σ̂ = uᵀWv;
- the six batch means enter the EMAs (momentum 0.9, the first batch initialises them), then
  the two relativistic losses use the updated means; each loss / accumulation is backpropagated;
- at its gate, per discriminator: AdamW step (lr = policy lr / 2, betas (0.9, 0.999), eps 1e-8,
  weight decay 0.01), then the cosine-with-warm-up scheduler step, then zero_grad;
- generator term with frozen eval-mode discriminators and the updated means:
  ``½ [BCE(D+(h_θ+) − μ+(r+), 1) + BCE(D−(h_θ−) − μ−(r−), 1)]``.

Two things cannot be equal bit for bit, and the test removes them rather than loosening the
tolerance (docs/methods.md lists both as deviations):
- dropout is 0: the release's six forwards and the package's two batched forwards draw
  dropout masks in different orders from any RNG stream;
- power iteration: the release scores a discriminator's three inputs after 1, 2 and 3
  iterations of its order, the package all three after 3 iterations of the parametrization's
  order (u first). Both give σ_max once the iteration has converged, so every spectrally
  normalised weight here gets a dominant singular value (σ1 = 100 σ2) with u, v starting at
  its singular vectors: after each optimiser step one iteration re-converges to fp32 round-off.
  (With generic weights the two differ by the iteration's convergence error: about 1e-5 in μ.)

One parameter is left out of the comparison: the attention key bias. Its exact gradient is 0
(a query's logits all shift by the same q·b_k, which softmax ignores), so its computed
gradient is round-off, and AdamW's normalisation turns round-off into steps of any size; it
cannot change a score, which the score, μ and gradient checks confirm step after step.
Tolerances: 1e-5 relative; absolute 1e-5 of the largest latent gradient, and 1e-6 on
parameters (1e-3 of one AdamW step at lr 1e-3, for elements whose gradient is near 0).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from latents import H, make_batch, make_config
from torch import Tensor, nn

from ganpo_plugins import GANPORegularizer, LatentBatch, RegularizerContext, StepInfo

POLICY_LR = 2e-3
TOTAL_STEPS = 20
WARMUP_STEPS = 2
MOMENTUM = 0.9


def _bce(logits: Tensor, target: float) -> Tensor:
    """Binary cross-entropy with logits, mean over the batch: softplus(−z) for 1, softplus(z) for 0."""
    return F.softplus(-logits if target == 1.0 else logits).mean()


def _hf_cosine_with_warmup(step: int) -> float:
    """Hugging Face ``get_cosine_schedule_with_warmup`` multiplier after ``step`` scheduler steps."""
    if step < WARMUP_STEPS:
        return step / max(1, WARMUP_STEPS)
    progress = (step - WARMUP_STEPS) / max(1, TOTAL_STEPS - WARMUP_STEPS)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


class LegacySpectralLinear(nn.Module):
    """Linear with W / σ̂; one power iteration (v first, then u) per train-mode forward."""

    def __init__(self, weight: Tensor, bias: Tensor, u: Tensor, v: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())
        self.register_buffer("u", u.detach().clone())
        self.register_buffer("v", v.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                self.v = F.normalize(self.weight.T @ self.u, dim=0, eps=1e-12)
                self.u = F.normalize(self.weight @ self.v, dim=0, eps=1e-12)
        sigma = torch.dot(self.u, self.weight @ self.v)
        return F.linear(x, self.weight / sigma, self.bias)


def _spectral_copy(layer: nn.Module) -> LegacySpectralLinear:
    sn = layer.parametrizations.weight[0]
    return LegacySpectralLinear(layer.parametrizations.weight.original, layer.bias, sn._u, sn._v)


class ReleaseStyleDiscriminator(nn.Module):
    """The paper's Transformer discriminator without a mask: mean over all positions."""

    def __init__(self, package: nn.Module) -> None:
        super().__init__()
        self.proj = _spectral_copy(package.input_proj)
        self.positions = nn.Parameter(package.positions.detach().clone())
        self.encoder = copy.deepcopy(package.encoder)
        self.head1 = _spectral_copy(package.head[0])
        self.head2 = _spectral_copy(package.head[2])

    def forward(self, hidden: Tensor) -> Tensor:
        x = self.proj(hidden) + self.positions[:, : hidden.shape[1]]
        pooled = self.encoder(x).mean(1)
        return self.head2(F.gelu(self.head1(pooled))).squeeze(-1)

    def comparable(self) -> list[Tensor]:
        return [
            self.proj.weight,
            self.proj.bias,
            self.positions,
            *_without_key_bias(self.encoder),
            self.head1.weight,
            self.head1.bias,
            self.head2.weight,
            self.head2.bias,
        ]


def _without_key_bias(encoder: nn.Module) -> list[Tensor]:
    """The encoder's parameters, the middle (key) third of each attention input bias left out."""
    out = []
    for name, p in encoder.named_parameters():
        if name.endswith("in_proj_bias"):
            query, _, value = p.chunk(3)
            out += [query, value]
        else:
            out.append(p)
    return out


def _package_comparable(disc: nn.Module) -> list[Tensor]:
    def linear(layer: nn.Module) -> list[Tensor]:
        return [layer.parametrizations.weight.original, layer.bias]

    return [
        *linear(disc.input_proj),
        disc.positions,
        *_without_key_bias(disc.encoder),
        *linear(disc.head[0]),
        *linear(disc.head[2]),
    ]


class ReleaseStyleGANPO:
    """The release's per-micro-step training of both discriminators and its generator term."""

    def __init__(self, package: GANPORegularizer, release_gate: bool) -> None:
        self.discs = {side: ReleaseStyleDiscriminator(package.discriminators[side]) for side in ("pos", "neg")}
        self.optimizers = {
            side: torch.optim.AdamW(d.parameters(), lr=POLICY_LR / 2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
            for side, d in self.discs.items()
        }
        self.schedulers = {
            side: torch.optim.lr_scheduler.LambdaLR(opt, _hf_cosine_with_warmup)
            for side, opt in self.optimizers.items()
        }
        self.mu: dict[str, Tensor] | None = None
        self.release_gate = release_gate
        self.global_step = 0  # policy optimiser steps taken
        self.stepped_at: list[int] = []

    def discriminator_step(self, batch: LatentBatch, micro_step: int, accumulation: int) -> dict[str, float]:
        pc, pr = batch.policy_chosen.detach(), batch.policy_rejected.detach()
        rc, rr = batch.ref_chosen, batch.ref_rejected
        dp, dn = self.discs["pos"].train(), self.discs["neg"].train()
        s = {"p_theta": dp(pc), "p_rc": dp(rc), "p_rr": dp(rr), "n_theta": dn(pr), "n_rc": dn(rc), "n_rr": dn(rr)}
        means = {k: v.detach().mean() for k, v in s.items()}
        self.mu = means if self.mu is None else {k: MOMENTUM * self.mu[k] + (1 - MOMENTUM) * means[k] for k in means}
        mu = self.mu
        # D+: reference-chosen > policy-chosen > reference-rejected; D− the mirror.
        loss_pos = 0.25 * (
            _bce(s["p_rc"] - mu["p_theta"], 1.0)
            + _bce(s["p_theta"] - mu["p_rc"], 0.0)
            + _bce(s["p_theta"] - mu["p_rr"], 1.0)
            + _bce(s["p_rr"] - mu["p_theta"], 0.0)
        )
        loss_neg = 0.25 * (
            _bce(s["n_rr"] - mu["n_theta"], 1.0)
            + _bce(s["n_theta"] - mu["n_rr"], 0.0)
            + _bce(s["n_theta"] - mu["n_rc"], 1.0)
            + _bce(s["n_rc"] - mu["n_theta"], 0.0)
        )
        (loss_pos / accumulation).backward()
        (loss_neg / accumulation).backward()
        if self.release_gate:
            # The release's gate reads the policy step count before this micro-step's policy step.
            step_now = (self.global_step + 1) % accumulation == 0
        else:
            step_now = micro_step % accumulation == 0
        if step_now:
            self.stepped_at.append(micro_step)
            for side in ("pos", "neg"):
                self.optimizers[side].step()
                self.schedulers[side].step()
                self.optimizers[side].zero_grad()
        if micro_step % accumulation == 0:
            self.global_step += 1  # the policy's own optimiser steps at true boundaries
        return {"d_pos/loss": loss_pos.item(), "d_neg/loss": loss_neg.item()}

    def generator_term(self, batch: LatentBatch) -> Tensor:
        dp, dn = self.discs["pos"].eval(), self.discs["neg"].eval()
        for p in [*dp.parameters(), *dn.parameters()]:
            p.requires_grad_(False)
        adv = 0.5 * (
            _bce(dp(batch.policy_chosen) - self.mu["p_rc"], 1.0)
            + _bce(dn(batch.policy_rejected) - self.mu["n_rr"], 1.0)
        )
        for p in [*dp.parameters(), *dn.parameters()]:
            p.requires_grad_(True)
        return adv

    def mu_table(self) -> Tensor:
        """The means in the package's layout: [side, (real, fake, other)]."""
        m = self.mu
        return torch.stack(
            [torch.stack([m["p_rc"], m["p_theta"], m["p_rr"]]), torch.stack([m["n_rr"], m["n_theta"], m["n_rc"]])]
        )


def _package() -> GANPORegularizer:
    config = make_config(mask="none", discriminator={"dropout": 0.0, "num_layers": 2})
    ctx = RegularizerContext(hidden_size=H, policy_lr=POLICY_LR, total_steps=TOTAL_STEPS, warmup_steps=WARMUP_STEPS)
    reg = GANPORegularizer(config, ctx)
    with torch.no_grad():
        for layer in reg.discriminators.modules():
            if not hasattr(layer, "parametrizations"):
                continue
            weight, sn = layer.parametrizations.weight.original, layer.parametrizations.weight[0]
            u, s, vh = torch.linalg.svd(weight, full_matrices=False)
            if s.numel() > 1:  # rank one (the 1-row output layer) converges in one iteration anyway
                weight.add_((100 * s[1] - s[0]) * torch.outer(u[:, 0], vh[0]))
            sn._u.copy_(u[:, 0])
            sn._v.copy_(vh[0])
    return reg


@pytest.mark.parametrize("accumulation", [1, 2])
def test_package_matches_release_style_steps(accumulation: int) -> None:
    """Six policy steps (accumulation 1; with 2 the release-style steps at true boundaries)."""
    package = _package()
    release = ReleaseStyleGANPO(package, release_gate=False)
    for micro_step in range(1, 6 * accumulation + 1):
        boundary = micro_step % accumulation == 0
        ours, theirs = make_batch(micro_step), make_batch(micro_step)
        metrics = package.update(ours, StepInfo(is_boundary=boundary, accumulation_steps=accumulation))
        expected = release.discriminator_step(theirs, micro_step, accumulation)
        for key, value in expected.items():
            assert metrics[key] == pytest.approx(value, rel=1e-5), (micro_step, key)
        torch.testing.assert_close(package.mu, release.mu_table(), rtol=1e-5, atol=1e-6)
        package.policy_term(ours).loss.backward()
        release.generator_term(theirs).backward()
        for got, want in ((ours.policy_chosen, theirs.policy_chosen), (ours.policy_rejected, theirs.policy_rejected)):
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-5 * want.grad.abs().max().item())
        for side in ("pos", "neg"):
            for got, want in zip(
                _package_comparable(package.discriminators[side]), release.discs[side].comparable(), strict=True
            ):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert package.disc_steps == 6
    assert release.stepped_at == [accumulation * k for k in range(1, 7)]


def test_release_gate_steps_off_the_accumulation_boundaries() -> None:
    """The documented deviation: the release gates its step on ``(global_step + 1) % 2 == 0``,
    read before the policy's step, so with accumulation 2 it steps at micro-steps 3, 4, 7, 8 of 8
    (micro-step 3 with the gradients of micro-steps 1–3); the package steps at 2, 4, 6, 8."""
    package = _package()
    release = ReleaseStyleGANPO(package, release_gate=True)
    package_stepped_at = []
    for micro_step in range(1, 9):
        before = package.disc_steps
        package.update(make_batch(micro_step), StepInfo(is_boundary=micro_step % 2 == 0, accumulation_steps=2))
        release.discriminator_step(make_batch(micro_step), micro_step, 2)
        if package.disc_steps > before:
            package_stepped_at.append(micro_step)
    assert release.stepped_at == [3, 4, 7, 8]
    assert package_stepped_at == [2, 4, 6, 8]
