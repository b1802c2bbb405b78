"""Discriminator architectures and position compaction."""

from __future__ import annotations

import pytest
import torch
from latents import make_batch, make_regularizer

from ganpo_plugins import StepInfo
from ganpo_plugins.formulas.discriminators import (
    MLPDiscriminator,
    TransformerDiscriminator,
    compact_positions,
    pad_and_stack,
)
from ganpo_plugins.plugins.builtin import ganpo_discriminators
from ganpo_plugins.plugins.parse import parse_config

H = 12


def _discriminators() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "transformer": TransformerDiscriminator(H, d_model=16, num_layers=2, num_heads=4, ffn_size=32, max_positions=8),
        "mlp": MLPDiscriminator(H, d_model=16, num_layers=2),
    }


@pytest.mark.parametrize("kind", ["transformer", "mlp"])
def test_masked_positions_cannot_change_scores(kind: str) -> None:
    disc = _discriminators()[kind].eval()
    h = torch.randn(3, 6, H)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    changed = h.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), H) * 50
    compact, m = compact_positions(h, mask, 8)
    compact2, m2 = compact_positions(changed, mask, 8)
    torch.testing.assert_close(disc(compact, m), disc(compact2, m2))
    # and even non-finite garbage at masked positions stays out
    changed[~mask] = float("nan")
    compact3, m3 = compact_positions(changed, mask, 8)
    torch.testing.assert_close(disc(compact, m), disc(compact3, m3))


@pytest.mark.parametrize("kind", ["transformer", "mlp"])
def test_batched_scoring_equals_separate_scoring(kind: str) -> None:
    disc = _discriminators()[kind].eval()
    parts = []
    for length in (3, 5, 2):
        h = torch.randn(2, length, H)
        m = torch.ones(2, length, dtype=torch.bool)
        m[1, -1] = False
        parts.append((h, m))
    hidden, mask = pad_and_stack(parts)
    batched = disc(hidden, mask)
    separate = torch.cat([disc(h, m) for h, m in parts])
    torch.testing.assert_close(batched, separate, atol=1e-5, rtol=1e-5)


def test_compact_positions_keeps_order_and_routes_gradient_to_selected_positions() -> None:
    h = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1).requires_grad_(True)
    mask = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    out, m = compact_positions(h, mask, 10)
    assert out.squeeze(-1).tolist() == [[1.0, 3.0, 4.0], [5.0, 0.0, 0.0]]
    assert m.tolist() == [[True, True, True], [True, False, False]]
    out.sum().backward()
    assert h.grad.squeeze(-1).bool().tolist() == mask.tolist()


def test_compact_positions_truncates_to_first_max_positions() -> None:
    h = torch.arange(8, dtype=torch.float32).view(1, 8, 1)
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 0, 1]], dtype=torch.bool)
    out, m = compact_positions(h, mask, 3)
    assert out.squeeze(-1).tolist() == [[1.0, 2.0, 3.0]]
    assert m.all()


def test_transformer_truncates_long_sequences() -> None:
    disc = _discriminators()["transformer"].eval()
    h = torch.randn(1, 12, H)
    full = torch.ones(1, 12, dtype=torch.bool)
    torch.testing.assert_close(disc(h, full), disc(h[:, :8], full[:, :8]))


def test_initialisation_follows_the_paper() -> None:
    disc = _discriminators()["transformer"]
    assert disc.positions.shape == (1, 8, 16)
    for name, p in disc.named_parameters():
        if name.endswith("bias") and "norm" not in name:
            assert torch.count_nonzero(p) == 0, name
    # spectral norm: the effective weight has largest singular value ≈ 1
    disc.eval()
    w = disc.input_proj.weight
    assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, rel=0.05)


def _power_iterate(weight: torch.Tensor, v: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` iterations of u ← Wv/‖Wv‖, then v ← Wᵀu/‖Wᵀu‖ (the parametrization's order)."""
    for _ in range(n):
        u = torch.nn.functional.normalize(weight @ v, dim=0)
        v = torch.nn.functional.normalize(weight.T @ u, dim=0)
    return u, v


def _spectral_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if hasattr(m, "parametrizations")]


def _weights_and_v(layers: list[torch.nn.Module]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (m.parametrizations.weight.original.detach().clone(), m.parametrizations.weight[0]._v.clone()) for m in layers
    ]


@pytest.mark.parametrize("iterations", [1, 3])
def test_each_train_forward_runs_the_configured_power_iterations(iterations: int) -> None:
    torch.manual_seed(0)
    disc = TransformerDiscriminator(H, d_model=16, num_heads=4, ffn_size=32, power_iterations=iterations)
    layers = _spectral_layers(disc)
    assert len(layers) == 3  # input projection and both head layers
    h, mask = torch.randn(2, 5, H), torch.ones(2, 5, dtype=torch.bool)
    before = _weights_and_v(layers)
    disc.train()(h, mask)
    for m, (weight, v0) in zip(layers, before, strict=True):
        u, v = _power_iterate(weight, v0, iterations)
        torch.testing.assert_close(m.parametrizations.weight[0]._u, u)
        torch.testing.assert_close(m.parametrizations.weight[0]._v, v)
        # σ̂ = uᵀWv: the effective weight is W / σ̂ with the updated vectors
        torch.testing.assert_close(m.weight, weight / torch.dot(u, weight @ v))
    after_train = [m.parametrizations.weight[0]._u.clone() for m in layers]
    disc.eval()(h, mask)  # eval forwards iterate nothing
    assert all(torch.equal(u, m.parametrizations.weight[0]._u) for u, m in zip(after_train, layers, strict=True))


@pytest.mark.parametrize("kind", ["transformer", "mlp"])
def test_factory_passes_power_iterations_and_spectral_switch(kind: str) -> None:
    factory = ganpo_discriminators()[kind]
    sizes = {"kind": kind, "d_model": 16, "num_heads": 4, "ffn_size": 32}
    disc = factory(H, parse_config({"discriminator": {**sizes, "power_iterations": 5}}))
    assert {m.parametrizations.weight[0].n_power_iterations for m in _spectral_layers(disc)} == {5}
    assert parse_config({}).discriminator.power_iterations == 3  # the release's effective count
    plain = factory(H, parse_config({"discriminator": {**sizes, "spectral_norm": False}}))
    assert _spectral_layers(plain) == []


def test_one_discriminator_step_runs_three_iterations_in_its_one_batched_forward() -> None:
    reg = make_regularizer()
    layers = _spectral_layers(reg.discriminators)
    before = _weights_and_v(layers)
    reg.update(make_batch(0), StepInfo())
    reg.policy_term(make_batch(1))  # eval mode: no iteration
    for m, (weight, v0) in zip(layers, before, strict=True):
        u, v = _power_iterate(weight, v0, 3)
        torch.testing.assert_close(m.parametrizations.weight[0]._u, u)
        torch.testing.assert_close(m.parametrizations.weight[0]._v, v)
