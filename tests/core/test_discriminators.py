"""Discriminator architectures and position compaction."""

from __future__ import annotations

import pytest
import torch

from ganpo_plugins.discriminators import MLPDiscriminator, TransformerDiscriminator, compact_positions, pad_and_stack

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
