"""Every invalid config value gives one clear error naming the key, the value and the fix."""

from __future__ import annotations

import pytest

from ganpo_plugins.config import GANPOConfig, GANPOConfigError, parse_config

# (config, substrings the message must contain)
INVALID = [
    ({"weight": -1.0}, ["ganpo.weight", ">= 0", "got -1.0"]),
    ({"weight": float("nan")}, ["ganpo.weight", "finite"]),
    ({"weight": float("inf")}, ["ganpo.weight", "finite"]),
    ({"weight": "heavy"}, ["ganpo.weight", "valid number", "'heavy'"]),
    (
        {"regularizer": "gnapo"},
        ["ganpo.regularizer", "unknown regularizer 'gnapo'", "ganpo, mmd", "Did you mean 'ganpo'"],
    ),
    ({"mask": "respons"}, ["ganpo.mask", "'response', 'sequence' or 'none'", "Did you mean 'response'"]),
    ({"max_positions": 0}, ["ganpo.max_positions", "greater than or equal to 1", "got 0"]),
    ({"ema_momentum": 1.0}, ["ganpo.ema_momentum", "[0, 1)", "0.9"]),
    ({"ema_momentum": -0.1}, ["ganpo.ema_momentum", "[0, 1)"]),
    ({"preference_loss": "dpo"}, ["ganpo.preference_loss", "unknown preference_loss 'dpo'", "logistic"]),
    (
        {"discriminator": {"kind": "cnn"}},
        ["ganpo.discriminator.kind", "unknown discriminator 'cnn'", "mlp, transformer"],
    ),
    ({"discriminator": {"d_model": 0}}, ["ganpo.discriminator.d_model", "greater than or equal to 1"]),
    ({"discriminator": {"num_heads": 3}}, ["ganpo.discriminator", "num_heads=3 must divide d_model=512"]),
    ({"discriminator": {"dropout": 1.0}}, ["ganpo.discriminator.dropout", "less than 1"]),
    ({"discriminator": {"ffn_size": -4}}, ["ganpo.discriminator.ffn_size", "greater than or equal to 1"]),
    ({"optimizer": {"lr": 0.0}}, ["ganpo.optimizer.lr", "finite number > 0", "got 0.0"]),
    ({"optimizer": {"lr": float("nan")}}, ["ganpo.optimizer.lr", "finite number > 0"]),
    ({"optimizer": {"lr_ratio": -0.5}}, ["ganpo.optimizer.lr_ratio", "finite number > 0"]),
    ({"optimizer": {"betas": [0.9, 1.0]}}, ["ganpo.optimizer.betas", "[0, 1)"]),
    ({"optimizer": {"scheduler": "cosin"}}, ["ganpo.optimizer.scheduler", "Did you mean 'cosine'"]),
    ({"optimizer": {"update_ratio": 0}}, ["ganpo.optimizer.update_ratio", "greater than or equal to 1"]),
    ({"optimizer": {"warmup_steps": -1}}, ["ganpo.optimizer.warmup_steps", "greater than or equal to 0"]),
    ({"optimizer": {"weight_decay": -0.1}}, ["ganpo.optimizer.weight_decay", "greater than or equal to 0"]),
    ({"saturation_patience": 0}, ["ganpo.saturation_patience", "greater than or equal to 1"]),
    ({"wieght": 1.0}, ["ganpo.wieght", "unknown key", "Did you mean 'weight'"]),
    ({"discriminator": {"layers": 2}}, ["ganpo.discriminator.layers", "unknown key", "num_layers"]),
    ({"options": {"x": 1}}, ["ganpo", "regularizer 'ganpo' takes no options"]),
    ({"regularizer": "mmd", "options": {"bandwidth": [1.0]}}, ["options.bandwidth", "Did you mean 'bandwidths'"]),
    ({"regularizer": "mmd", "options": {"bandwidths": []}}, ["options.bandwidths", "at least 1"]),
    ({"regularizer": "mmd", "discriminator": {"d_model": 64}}, ["discriminator: not used by regularizer 'mmd'"]),
]


@pytest.mark.parametrize("data,expected", INVALID, ids=[str(c) for c, _ in INVALID])
def test_invalid_values_raise_one_clear_error(data, expected) -> None:
    with pytest.raises(GANPOConfigError) as info:
        parse_config(data)
    message = str(info.value)
    for part in expected:
        assert part in message, f"{part!r} missing from:\n{message}"
    assert message.count("\n  ") == 1  # exactly one problem reported


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
