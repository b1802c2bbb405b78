"""Dotted flags (``--ganpo.*`` / ``--apo.*``) as the CLI adapters parse them (in-process, no host needed)."""

from __future__ import annotations

import pytest

from ganpo_plugins import GANPOConfig, parse_config
from ganpo_plugins.adapter_kit.flags import FlagError, split_flags
from ganpo_plugins.apo import APOSettings, parse_apo_settings


def test_ganpo_flags_are_split_from_the_hosts_and_nested() -> None:
    argv = [
        "--model.beta", "0.1",
        "--ganpo.discriminator.d_model", "256",
        "--ds.zero_stage", "3",
        "--ganpo.optimizer.lr=1e-6",
        "--ganpo.optimizer.betas", "0.5", "0.9",
        "--ganpo.discriminator.no_spectral_norm",
        "--ganpo.save_every_rank",
        "--ganpo.seed", "none",
        "--ganpo.mask", "none",
        "--ds.packing_samples",
    ]  # fmt: skip
    host, raw = split_flags(argv, "--ganpo", GANPOConfig)
    assert host == ["--model.beta", "0.1", "--ds.zero_stage", "3", "--ds.packing_samples"]
    config = parse_config(raw, prefix="--ganpo")
    assert config.discriminator.d_model == 256 and config.discriminator.spectral_norm is False
    assert config.optimizer.lr == 1e-6 and config.optimizer.betas == (0.5, 0.9)
    assert config.save_every_rank is True
    assert config.seed is None and config.mask == "none"  # "none" is None only where the field is optional


def test_options_take_json_values() -> None:
    _, raw = split_flags(["--ganpo.regularizer", "mmd", "--ganpo.options.bandwidths", "[1, 2]"], "--ganpo", GANPOConfig)
    assert parse_config(raw).options == {"bandwidths": [1, 2]}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ganpo.weight"], "--ganpo.weight expects 1 value"),
        (["--ganpo.optimizer.betas", "0.9", "--ds.zero_stage"], "--ganpo.optimizer.betas expects 2 values"),
        (["--ganpo.save_every_rank=true"], "--ganpo.save_every_rank is a switch"),
        (["--ganpo", "1"], "expected --ganpo.<key>"),
    ],
)
def test_unreadable_flags_name_themselves(argv: list[str], message: str) -> None:
    with pytest.raises(FlagError, match=message.replace(".", r"\.").replace("<", ".").replace(">", ".")):
        split_flags(argv, "--ganpo", GANPOConfig)


def test_unknown_and_bad_flags_are_named_by_validation() -> None:
    _, raw = split_flags(["--ganpo.discriminator.d_modle", "8", "--ganpo.weight", "-2"], "--ganpo", GANPOConfig)
    with pytest.raises(ValueError) as info:
        parse_config(raw, prefix="--ganpo")
    text = str(info.value)
    assert "--ganpo.discriminator.d_modle: unknown key" in text and "'d_model'" in text
    assert "--ganpo.weight: weight must be a finite number >= 0" in text


def test_apo_flags() -> None:
    host, raw = split_flags(
        ["--apo.c_apo", "0.2", "--train.seed", "1", "--apo.samples_per_prompt", "8"], "--apo", APOSettings
    )
    assert host == ["--train.seed", "1"]
    settings = parse_apo_settings(raw, prefix="--apo")
    assert (settings.c_human, settings.c_apo, settings.samples_per_prompt) == (1.0, 0.2, 8)
