"""Small latent batches and regularizers shared by the core and reliability tests."""

from __future__ import annotations

import torch

from ganpo_plugins import GANPORegularizer, LatentBatch, RegularizerContext, UnpairedLatentBatch, parse_config

H = 8


def make_config(**overrides):
    base = {"discriminator": {"d_model": 16, "num_heads": 2, "ffn_size": 32, "num_layers": 1}}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return parse_config(base)


def make_regularizer(**overrides) -> GANPORegularizer:
    ctx = RegularizerContext(hidden_size=H, policy_lr=2e-3, total_steps=20, warmup_steps=2, seed=0)
    return GANPORegularizer(make_config(**overrides), ctx)


def make_batch(
    seed: int, b: int = 3, t: int = 7, requires_grad: bool = True, b_rejected: int | None = None
) -> LatentBatch:
    """Policy latents are leaf tensors, so tests can read their ``.grad``. ``b_rejected``: the
    rejected side's size, for unpaired sides (online RL; an :class:`UnpairedLatentBatch`)."""
    g = torch.Generator().manual_seed(seed)
    sizes = (b, b if b_rejected is None else b_rejected)
    policy_c, policy_r, ref_c, ref_r = (torch.randn(sizes[i % 2], t, H, generator=g) for i in range(4))
    attention, response = [], []
    for n in sizes:
        attention.append(torch.ones(n, t, dtype=torch.bool))
        attention[-1][:1, -2:] = False  # right padding on the first row
        response.append(torch.zeros(n, t, dtype=torch.bool))
        response[-1][:, 3:] = True
    kind = LatentBatch if b_rejected is None else UnpairedLatentBatch
    return kind(
        policy_c.requires_grad_(requires_grad), policy_r.requires_grad_(requires_grad), ref_c, ref_r,
        attention[0], attention[1], response[0], response[1],
    )  # fmt: skip


def disc_params(reg: GANPORegularizer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in reg.discriminators.parameters()]
