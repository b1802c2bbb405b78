"""Config validation beyond the bad-input table (docs/bad-input.md, driven by test_bad_input_table.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from ganpo_plugins import hookimpl
from ganpo_plugins.config import GANPOConfigError, RegularizerConfig
from ganpo_plugins.plugins.parse import parse_config
from ganpo_plugins.plugins.registry import fresh_plugin_manager, register_plugin
from ganpo_plugins.regularizers.ganpo_config import GANPOConfig
from ganpo_plugins.regularizers.mmd import MMDConfig


@pytest.fixture
def fresh() -> Iterator[None]:
    fresh_plugin_manager()
    yield
    fresh_plugin_manager()


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


@pytest.mark.parametrize(
    "block",
    [{"regularizer": "mmd", "weight": 0.5, "options": {"bandwidths": [1.0, 2.0]}}, {"discriminator": {"d_model": 8}}],
)
def test_valid_config_round_trips_through_json(block: dict) -> None:
    cfg = parse_config(block)
    assert parse_config(cfg.model_dump(mode="json")) == cfg


def test_reading_a_config_imports_neither_torch_nor_the_registry() -> None:
    check = (
        "import ganpo_plugins.config, sys; "
        "assert 'torch' not in sys.modules, sorted(sys.modules); "
        "assert not any(m.startswith('ganpo_plugins.plugins') for m in sys.modules), sorted(sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_each_regularizer_gets_its_own_config_model() -> None:
    assert type(parse_config({})) is GANPOConfig
    mmd = parse_config({"regularizer": "mmd"})
    assert type(mmd) is MMDConfig and not hasattr(mmd, "discriminator")


class _Plain:
    """A third-party factory that declares no config model: it reads the common keys only."""

    @hookimpl
    def ganpo_regularizers(self):
        return {"plain": _Plain}


def test_a_factory_without_config_model_reads_only_the_common_keys(fresh) -> None:
    register_plugin(_Plain(), "plain_plugin")
    cfg = parse_config({"regularizer": "plain", "weight": 0.25, "seed": 3})
    assert type(cfg) is RegularizerConfig and (cfg.weight, cfg.seed) == (0.25, 3)
    assert not hasattr(cfg, "discriminator") and not hasattr(cfg, "optimizer")
    with pytest.raises(GANPOConfigError, match=r"ganpo: optimizer: not used by regularizer 'plain'"):
        parse_config({"regularizer": "plain", "optimizer": {"lr": 1.0}})
    with pytest.raises(GANPOConfigError, match=r"ganpo.wieght: unknown key; known keys here: regularizer, weight"):
        parse_config({"regularizer": "plain", "wieght": 1.0})


def test_another_regularizers_key_at_its_default_is_accepted() -> None:
    """A full dump of a GANPO config names another regularizer; its GANPO keys hold defaults."""
    block = {**GANPOConfig().model_dump(mode="json"), "regularizer": "mmd"}
    assert type(parse_config(block)) is MMDConfig


def test_an_instance_is_checked_against_its_regularizer() -> None:
    cfg = GANPOConfig(weight=0.5)
    assert parse_config(cfg) is cfg
    assert type(parse_config(GANPOConfig(regularizer="mmd"))) is MMDConfig
    with pytest.raises(GANPOConfigError, match=r"ganpo.preference_loss: unknown preference_loss 'dpo'"):
        parse_config(GANPOConfig(preference_loss="dpo"))
