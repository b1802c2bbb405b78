"""The TRL adapter on the seams every TRL release in the supported range keeps (run in the
oldest and the newest TRL env): a package-computed GPO kind, nothing of TRL replaced, an
exact undo, the version gate, one attachment per trainer."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl.trainer", reason="needs TRL: tox -e trl-oldest / trl-newest")

import trl.trainer.dpo_trainer as dpo_module
import trl.trainer.utils as trl_utils
from datasets import Dataset
from ganpo_trl import attach_regularizer
from host_trl.test_trl_attach import BETA, SMALL_D, assert_loss_is, dpo_args, train_logs
from transformers import AutoModelForCausalLM
from trl import DPOTrainer

from ganpo_plugins.adapter_kit import versions as hosts
from ganpo_plugins.adapter_kit.taps import find_decoder

# A non-default configuration: the undo must not depend on defaults.
CONFIG = {**SMALL_D, "preference_loss": "savage", "weight": 0.5, "mask": "sequence", "seed": 7}


@pytest.fixture
def make_trainer(tiny_assets: Path, tokenizer: Any, pairs: Dataset, tmp_path: Path) -> Callable[..., DPOTrainer]:
    def make(**overrides: Any) -> DPOTrainer:
        model = AutoModelForCausalLM.from_pretrained(tiny_assets / "model")
        return DPOTrainer(model, args=dpo_args(tmp_path, **overrides), train_dataset=pairs, processing_class=tokenizer)

    return make


def _module_state(module: Any) -> dict[str, int]:
    return {name: id(value) for name, value in vars(module).items()}


def test_savage_is_computed_by_the_package_and_detach_restores_everything(
    make_trainer: Callable[..., DPOTrainer],
) -> None:
    modules_before = {m.__name__: _module_state(m) for m in (dpo_module, trl_utils)}
    trainer = make_trainer(max_steps=3)
    loss_types_before = (list(trainer.loss_types), list(trainer.loss_weights))
    callbacks_before = [type(c) for c in trainer.callback_handler.callbacks]
    handle = attach_regularizer(trainer, CONFIG)
    trainer.train()
    # f(x) = 1/(1+e^x)^2 at x = βρ (docs/methods.md), TRL's logged margin is βρ; λ = 0.5.
    for entry in train_logs(trainer):
        savage = 1.0 / (1.0 + math.exp(entry["rewards/margins"])) ** 2
        assert entry["loss"] == pytest.approx(savage + 0.5 * entry["ganpo/adv_loss"], rel=1e-5, abs=1e-6)
    assert any(abs(e["rewards/margins"]) > 1e-5 for e in train_logs(trainer))
    decoder = find_decoder(trainer.model)
    assert decoder is not None and decoder._forward_hooks
    handle.detach()
    assert {m.__name__: _module_state(m) for m in (dpo_module, trl_utils)} == modules_before
    leftovers = [k for k, v in vars(trainer).items() if "GANPOAttachment" in getattr(v, "__qualname__", "")]
    assert leftovers == [] and not any(v is handle for v in vars(trainer).values())
    assert (trainer.loss_types, trainer.loss_weights) == loss_types_before
    assert [type(c) for c in trainer.callback_handler.callbacks] == callbacks_before
    assert not decoder._forward_hooks and not decoder._forward_pre_hooks
    assert not hasattr(trainer, "_ganpo_attachment")
    # A plain trainer in the same process trains as TRL's own.
    plain = make_trainer(max_steps=1)
    plain.train()
    assert "ganpo/adv_loss" not in train_logs(plain)[0]


def test_logistic_through_trl_restores_the_loss_types(make_trainer: Callable[..., DPOTrainer]) -> None:
    trainer = make_trainer(max_steps=1, loss_type=["sigmoid"])
    handle = attach_regularizer(trainer, {**SMALL_D, "preference_loss": "hinge"})
    assert trainer.loss_types == ["hinge"]
    handle.detach()
    assert trainer.loss_types == ["sigmoid"]


def test_attaching_twice_is_refused(make_trainer: Callable[..., DPOTrainer]) -> None:
    trainer = make_trainer()
    handle = attach_regularizer(trainer, SMALL_D)
    with pytest.raises(ValueError, match=r"already attached.*detach"):
        attach_regularizer(trainer, SMALL_D)
    handle.detach()
    attach_regularizer(trainer, SMALL_D).detach()  # after detach, attaching again is fine


@pytest.mark.parametrize("installed", ["1.8.0", "2.0.0"])
def test_unsupported_trl_version_is_refused_with_the_range(
    make_trainer: Callable[..., DPOTrainer], monkeypatch: pytest.MonkeyPatch, installed: str
) -> None:
    trainer = make_trainer()
    monkeypatch.setattr(hosts, "installed_version", lambda name: installed if name == "trl" else None)
    with pytest.raises(hosts.HostVersionError, match=rf"trl {installed} is installed.*trl>=1\.9\.0,<2"):
        attach_regularizer(trainer, SMALL_D)
    assert "_compute_loss" not in vars(trainer)


def test_precomputed_reference_with_a_package_loss_and_lora(
    tiny_assets: Path, tokenizer: Any, pairs: Dataset, tmp_path: Path
) -> None:
    from peft import LoraConfig

    trainer = DPOTrainer(
        AutoModelForCausalLM.from_pretrained(tiny_assets / "model"),
        args=dpo_args(tmp_path, max_steps=2, precompute_ref_log_probs=True, learning_rate=1e-2),
        train_dataset=pairs,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0),
    )
    handle = attach_regularizer(trainer, {**SMALL_D, "preference_loss": "truncated_quadratic"})
    assert handle.own_reference and handle.reference is None  # the adapter-disabled policy
    trainer.train()
    assert_loss_is(trainer, lambda e: max(0.0, 1 - e["rewards/margins"]) ** 2)
    assert all(math.isfinite(e["ganpo/adv_loss"]) for e in train_logs(trainer))
    assert trainer.beta == BETA
