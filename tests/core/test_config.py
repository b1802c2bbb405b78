"""Config validation beyond the bad-input table (docs/bad-input.md, driven by test_bad_input_table.py)."""

from __future__ import annotations

import pytest

from ganpo_plugins.config import GANPOConfig, GANPOConfigError, parse_config


def test_several_errors_are_all_listed() -> None:
    with pytest.raises(GANPOConfigError) as info:
        parse_config({"weight": -1, "mask": "x"})
    assert "ganpo.weight" in str(info.value) and "ganpo.mask" in str(info.value)


def test_prefix_follows_the_host_spelling() -> None:
    with pytest.raises(GANPOConfigError, match=r"--ganpo\.weight"):
        parse_config({"weight": -1}, prefix="--ganpo")


def test_defaults_are_the_papers() -> None:
    cfg = parse_config({})
    assert (cfg.weight, cfg.mask, cfg.ema_momentum, cfg.max_positions) == (1.0, "response", 0.9, 2048)
    d = cfg.discriminator
    assert (d.kind, d.d_model, d.num_layers, d.num_heads, d.ffn_size, d.dropout) == (
        "transformer",
        512,
        2,
        8,
        2048,
        0.1,
    )
    o = cfg.optimizer
    assert (o.lr, o.lr_ratio, o.scheduler, o.update_ratio, o.warmup_steps) == (None, 0.5, "cosine", 1, None)


def test_valid_nested_config_round_trips_through_json() -> None:
    cfg = parse_config({"regularizer": "mmd", "weight": 0.5, "options": {"bandwidths": [1.0, 2.0]}})
    assert GANPOConfig.model_validate(cfg.model_dump(mode="json")) == cfg
