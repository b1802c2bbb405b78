"""Discriminators: maps from a hidden-state sequence ``[B, T, H]`` and a mask ``[B, T]`` to a score ``[B]``.

Both follow the GANPO paper (arXiv 2601.22083, §4 and ablations): spectrally normalised
projections, Xavier-uniform weights, zero biases. Positions are numbered from 0 in the order
the caller gives them; callers pass compacted sequences (:func:`compact_positions`), so a
discriminator never spends work on prompt or padding positions it would mask anyway.

Spectral norm (Miyato et al., arXiv 1802.05957): ``W / σ̂`` with ``σ̂ = uᵀ W v`` estimated by
power iteration on buffers ``u``, ``v`` (torch's ``parametrizations.spectral_norm``: started by
15 iterations from random vectors at construction; each iteration ``u ← Wv/‖Wv‖`` then
``v ← Wᵀu/‖Wᵀu‖``). Every train-mode forward runs ``power_iterations`` iterations, eval-mode
forwards none. The regularizer runs one train-mode forward per discriminator per step, so the
default 3 matches the public GANPO release, whose three separate forwards per step each run
one iteration (docs/methods.md lists the remaining differences).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from .functional import masked_mean

__all__ = ["MLPDiscriminator", "TransformerDiscriminator", "compact_positions", "pad_and_stack"]


def _linear(n_in: int, n_out: int, power_iterations: int | None) -> nn.Module:
    """Xavier-uniform Linear with zero bias; spectrally normalised unless ``power_iterations`` is None."""
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer if power_iterations is None else spectral_norm(layer, n_power_iterations=power_iterations)


class TransformerDiscriminator(nn.Module):
    """The paper's default discriminator.

    spectral-norm Linear ``H → d`` + learned positions ``(1, max_positions, d)`` ~ N(0, 0.02²)
    → pre-norm ``TransformerEncoder`` (GELU, batch-first, key-padding mask) → masked mean pool
    → spectral-norm Linear ``d → d``, GELU, spectral-norm Linear ``d → 1``.
    ``power_iterations`` is the spectral norm's iterations per train-mode forward; ``None``
    turns spectral norm off.
    """

    def __init__(
        self,
        input_size: int,
        d_model: int = 512,
        num_layers: int = 2,
        num_heads: int = 8,
        ffn_size: int = 2048,
        dropout: float = 0.1,
        max_positions: int = 2048,
        power_iterations: int | None = 3,
    ) -> None:
        super().__init__()
        self.max_positions = max_positions
        self.input_proj = _linear(input_size, d_model, power_iterations)
        self.positions = nn.Parameter(torch.randn(1, max_positions, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, ffn_size, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        for name, p in self.encoder.named_parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        self.head = nn.Sequential(
            _linear(d_model, d_model, power_iterations), nn.GELU(), _linear(d_model, 1, power_iterations)
        )

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        hidden, mask = hidden[:, : self.max_positions], mask[:, : self.max_positions]
        x = self.input_proj(hidden) + self.positions[:, : hidden.shape[1]]
        x = self.encoder(x, src_key_padding_mask=~mask)
        return self.head(masked_mean(x, mask)).squeeze(-1)


class MLPDiscriminator(nn.Module):
    """The paper's MLP ablation: masked mean pool over positions, then a spectral-norm MLP
    ``H → d → … → 1`` with GELU (``num_layers`` hidden layers of width ``d``); ``power_iterations``
    as in :class:`TransformerDiscriminator`."""

    def __init__(
        self, input_size: int, d_model: int = 512, num_layers: int = 2, power_iterations: int | None = 3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_size
        for _ in range(num_layers):
            layers += [_linear(width, d_model, power_iterations), nn.GELU()]
            width = d_model
        layers.append(_linear(width, 1, power_iterations))
        self.mlp = nn.Sequential(*layers)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        return self.mlp(masked_mean(hidden, mask)).squeeze(-1)


def compact_positions(hidden: Tensor, mask: Tensor, max_positions: int) -> tuple[Tensor, Tensor]:
    """Gather each row's selected positions to the front: ``[B, T, H] → [B, L, H]``.

    ``L`` is the largest number of selected positions in a row, capped at ``max_positions``
    (a longer row keeps its first ``max_positions`` selected positions). Order is preserved,
    rows are right-padded with zeros, and the returned mask marks the real entries. The gather
    is differentiable, so gradient reaches exactly the selected positions of ``hidden``.
    """
    counts = mask.sum(1)
    length = int(min(int(counts.max().item()) if counts.numel() else 0, max_positions))
    length = max(length, 1)  # keep a valid shape for all-empty batches; the mask stays false
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :length]
    gathered = hidden.gather(1, order.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    new_mask = torch.arange(length, device=mask.device).unsqueeze(0) < counts.clamp_max(length).unsqueeze(1)
    # Padding entries hold unselected positions' values (possibly inf/NaN): zero them so they
    # cannot leak through masked attention or pooling (0 · NaN is NaN).
    return gathered.masked_fill(~new_mask.unsqueeze(-1), 0.0), new_mask


def pad_and_stack(parts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Concatenate ``(hidden [B_i, L_i, H], mask [B_i, L_i])`` pairs on dim 0, right-padding to
    the longest ``L_i``, so one discriminator forward scores them all."""
    length = max(h.shape[1] for h, _ in parts)
    hiddens, masks = [], []
    for h, m in parts:
        pad = length - h.shape[1]
        hiddens.append(nn.functional.pad(h, (0, 0, 0, pad)))
        masks.append(nn.functional.pad(m, (0, pad), value=False))
    return torch.cat(hiddens), torch.cat(masks)
