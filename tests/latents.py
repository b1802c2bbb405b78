"""Small latent batches and regularizers shared by the core and reliability tests."""

from __future__ import annotations

import torch

from ganpo_plugins import GANPORegularizer, LatentBatch, RegularizerContext, parse_config

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


def make_batch(seed: int, b: int = 3, t: int = 7, requires_grad: bool = True) -> LatentBatch:
    """Policy latents are leaf tensors, so tests can read their ``.grad``."""
    g = torch.Generator().manual_seed(seed)
    policy_c, policy_r, ref_c, ref_r = (torch.randn(b, t, H, generator=g) for _ in range(4))
    attention = torch.ones(b, t, dtype=torch.bool)
    attention[0, -2:] = False  # right padding on one row
    response = torch.zeros(b, t, dtype=torch.bool)
    response[:, 3:] = True
    return LatentBatch(
        policy_c.requires_grad_(requires_grad), policy_r.requires_grad_(requires_grad), ref_c, ref_r,
        attention, attention.clone(), response, response.clone(),
    )  # fmt: skip


def disc_params(reg: GANPORegularizer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in reg.discriminators.parameters()]
