"""GANPO on TRL's ``OnlineDPOTrainer`` (``ganpo_trl.online``): real runs, tiny model, CPU.

The reward scores the completion text (a count of one letter), so the pair order depends on
what the policy sampled; every run has a fixed seed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("trl.experimental.online_dpo", reason="needs TRL >= 1.9 with requests: tox -e trl-oldest")

from datasets import Dataset
from ganpo_trl import OnlineDPOAttachment, attach_regularizer
from transformers import TrainerCallback
from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

import ganpo_plugins
from ganpo_plugins import StepInfo
from ganpo_plugins.adapter_kit.checkpoint import state_path

SMALL_D = {"discriminator": {"d_model": 32, "num_heads": 4, "ffn_size": 64}}
BETA = 0.1


def reward(prompts: list[Any], completions: list[str], **kwargs: Any) -> list[float]:
    """How often the completion says ``e`` (by text: the ids are right-padded)."""
    return [float(c.count("e")) for c in completions]


@pytest.fixture(scope="module")
def prompts(pairs: Any) -> Dataset:
    return Dataset.from_dict({"prompt": pairs["prompt"][:8]})


def online_args(tmp_path: Path, **overrides: Any) -> OnlineDPOConfig:
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "per_device_train_batch_size": 2,
        "max_steps": 2,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "learning_rate": 1e-3,
        "max_new_tokens": 6,
        "max_length": 48,
        "seed": 0,
        "beta": BETA,
        "disable_tqdm": True,
    }
    return OnlineDPOConfig(**{**settings, **overrides})


@pytest.fixture
def make_trainer(
    tmp_path: Path, load_model: Callable[[], Any], tokenizer: Any, prompts: Dataset
) -> Callable[..., OnlineDPOTrainer]:
    def make(peft_config: Any = None, **overrides: Any) -> OnlineDPOTrainer:
        return OnlineDPOTrainer(
            load_model(),
            reward_funcs=reward,
            args=online_args(tmp_path, **overrides),
            train_dataset=prompts,
            processing_class=tokenizer,
            peft_config=peft_config,
        )

    return make


class Spy(TrainerCallback):
    """Records the ``StepInfo`` and the batch of every ``runner.step`` call."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.calls: list[tuple[Any, StepInfo | None]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        runner = self.handle.runner
        step = runner.step

        def spy(batch: Any, info: StepInfo | None) -> torch.Tensor:
            self.calls.append((batch, info))
            return step(batch, info)

        runner.step = spy


def train_logs(trainer: Any) -> list[dict[str, Any]]:
    return [e for e in trainer.state.log_history if "loss" in e]


def test_attach_claims_the_trainer_and_detach_undoes_it(make_trainer: Callable[..., OnlineDPOTrainer]) -> None:
    trainer = make_trainer()
    accelerator_before = dict(trainer.accelerator.__dict__)
    handle = ganpo_plugins.attach(trainer, {"weight": 1.0, **SMALL_D})
    assert isinstance(handle, OnlineDPOAttachment)
    wrapped = {"_forward", "_calculate_rewards_from_functions", "training_step", "log", "save_model"}
    assert wrapped | {"_load_optimizer_and_scheduler", "_ganpo_attachment"} <= trainer.__dict__.keys()
    with pytest.raises(ValueError, match="already attached"):
        attach_regularizer(trainer, {})
    handle.detach()
    assert not (wrapped | {"_ganpo_attachment"}) & trainer.__dict__.keys()
    assert trainer.accelerator.__dict__ == accelerator_before
    assert type(handle.__class__.WRAPPED) is dict


def test_base_loss_conflicts_are_refused(make_trainer: Callable[..., OnlineDPOTrainer]) -> None:
    with pytest.raises(ValueError, match="both choose the base loss"):
        attach_regularizer(make_trainer(loss_type="ipo"), {"preference_loss": "squared"})


def test_ref_model_is_refused_the_trainer_runs_its_own(make_trainer: Callable[..., OnlineDPOTrainer]) -> None:
    trainer = make_trainer()
    with pytest.raises(ValueError, match=r"OnlineDPOTrainer runs its own.*pass the reference to the trainer"):
        attach_regularizer(trainer, {}, ref_model=trainer.model)
    assert "_ganpo_attachment" not in vars(trainer)


def test_metrics_and_one_discriminator_step_per_optimiser_step(make_trainer: Callable[..., OnlineDPOTrainer]) -> None:
    trainer = make_trainer(gradient_accumulation_steps=2)
    handle = attach_regularizer(trainer, {"weight": 1.0, **SMALL_D})
    spy = Spy(handle)
    trainer.add_callback(spy)
    accelerator_backward = trainer.accelerator.backward
    trainer.train()
    assert [info.is_boundary for _, info in spy.calls] == [False, True, False, True]
    assert {info.accumulation_steps for _, info in spy.calls} == {2}
    assert handle.runner is not None and handle.runner.regularizer.disc_steps == 2
    # the batch holds the sampled completions: response positions lie after the prompt, within attention
    for batch, _ in spy.calls:
        assert batch.policy_chosen.shape[0] == 2 and batch.policy_chosen.requires_grad
        assert not batch.ref_chosen.requires_grad
        assert bool((batch.response_chosen <= batch.attention_chosen).all())
        assert int(batch.response_chosen.sum()) > 0
    logs = train_logs(trainer)
    assert len(logs) == 2
    for entry in logs:
        assert {"ganpo/adv_loss", "ganpo/d_pos/loss"} <= entry.keys(), entry
        assert math.isfinite(entry["loss"]) and "objective/scores_margin" in entry
    assert trainer.accelerator.backward == accelerator_backward  # the per-step wrapper is gone


def test_weight_zero_trains_exactly_like_plain_online_dpo(make_trainer: Callable[..., OnlineDPOTrainer]) -> None:
    plain = make_trainer()
    plain.train()
    regularized = make_trainer()
    attach_regularizer(regularized, {"weight": 0.0, **SMALL_D})
    regularized.train()
    for (name, a), b in zip(plain.model.named_parameters(), regularized.model.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert [e["loss"] for e in train_logs(plain)] == [e["loss"] for e in train_logs(regularized)]


def test_gpo_kind_replaces_the_base_loss(make_trainer: Callable[..., OnlineDPOTrainer]) -> None:
    # One pair per step: TRL logs that pair's β·ρ as rewards/margins, and the loss is squared's (βρ − 1)².
    trainer = make_trainer(per_device_train_batch_size=1)
    attach_regularizer(trainer, {"weight": 0.0, "preference_loss": "squared", **SMALL_D})
    trainer.train()
    for entry in train_logs(trainer):
        margin = entry["rewards/margins"]
        assert entry["loss"] == pytest.approx((margin - 1.0) ** 2, abs=2e-4), entry
        assert entry["loss"] != pytest.approx(-math.log(1 / (1 + math.exp(-margin))), abs=1e-3)  # not TRL's sigmoid


def test_resume_restores_the_regularizer_exactly(make_trainer: Callable[..., OnlineDPOTrainer], tmp_path: Path) -> None:
    config = {"weight": 1.0, **SMALL_D}
    full = make_trainer(save_strategy="steps", save_steps=1)
    full_handle = attach_regularizer(full, config)
    full.train()
    checkpoint = Path(full.args.output_dir) / "checkpoint-1"
    assert state_path(checkpoint).exists() and state_path(Path(full.args.output_dir) / "checkpoint-2").exists()

    resumed = make_trainer(output_dir=str(tmp_path / "resumed"))
    handle = attach_regularizer(resumed, config)
    loaded: list[dict[str, Any]] = []

    class AfterLoad(TrainerCallback):  # the first step of the resumed run starts from the loaded state
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not loaded:
                assert handle.runner is not None
                loaded.append(copy.deepcopy(handle.runner.regularizer.state_dict()))

    resumed.add_callback(AfterLoad())
    resumed.train(resume_from_checkpoint=str(checkpoint))
    saved = torch.load(state_path(checkpoint), weights_only=True)["state"]
    assert_same_state(loaded[0], saved)
    assert handle.runner is not None and full_handle.runner is not None
    assert_same_state(handle.runner.regularizer.state_dict(), full_handle.runner.regularizer.state_dict())


def assert_same_state(a: Any, b: Any, path: str = "state") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_state(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a.cpu(), b.cpu()), path
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_lora_uses_the_adapter_disabled_reference(make_trainer: Callable[..., OnlineDPOTrainer]) -> None:
    from peft import LoraConfig

    trainer = make_trainer(peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), max_steps=1)
    assert trainer.ref_model is None
    handle = attach_regularizer(trainer, {"weight": 1.0, **SMALL_D})
    spy = Spy(handle)
    trainer.add_callback(spy)
    trainer.train()
    ((batch, _),) = spy.calls
    # the reference differs from the policy only through the LoRA update (zero at init: B = 0)
    assert torch.allclose(batch.policy_chosen, batch.ref_chosen, atol=1e-5)
    assert "ganpo/adv_loss" in train_logs(trainer)[0]
