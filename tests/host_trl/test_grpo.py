"""GANPO on TRL's ``GRPOTrainer`` and ``RLOOTrainer`` (``ganpo_trl.grpo``): real runs, tiny model, CPU.

The reward scores the completion text (how often it says ``e``), so the sides depend on what the
policy sampled; every run has a fixed seed. The sides are the signs of TRL's own advantages
(docs/methods.md, "GANPO for group-based online RL").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("trl", reason="needs TRL: tox -e trl-oldest / trl-newest")

from datasets import Dataset
from ganpo_trl import OnlineRLAttachment, attach_regularizer
from state_equality import assert_states_equal
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from trl_args import rl_args

import ganpo_plugins
from ganpo_plugins.adapter_kit import versions as hosts
from ganpo_plugins.adapter_kit.checkpoint import state_path

SMALL_D = {"discriminator": {"d_model": 32, "num_heads": 4, "ffn_size": 64}}
GENERATIONS = 4


def reward(prompts: list[Any], completions: list[str], **kwargs: Any) -> list[float]:
    """How often the completion says ``e`` (by text: the ids are right-padded)."""
    return [float(c.count("e")) for c in completions]


def constant_reward(prompts: list[Any], completions: list[str], **kwargs: Any) -> list[float]:
    return [1.0 for _ in completions]  # every advantage 0: both sides empty


@pytest.fixture(scope="module")
def prompts(pairs: Any) -> Dataset:
    return Dataset.from_dict({"prompt": pairs["prompt"][:8]})


@pytest.fixture
def make_trainer(tmp_path: Path, load_model: Callable[[], Any], tokenizer: Any, prompts: Dataset) -> Callable[..., Any]:
    def make(rloo: bool = False, peft_config: Any = None, reward_fn: Any = reward, **overrides: Any) -> Any:
        trainer_class, config_class = (RLOOTrainer, RLOOConfig) if rloo else (GRPOTrainer, GRPOConfig)
        return trainer_class(
            load_model(),
            reward_funcs=reward_fn,
            args=rl_args(tmp_path, config_class, GENERATIONS, **overrides),
            train_dataset=prompts,
            processing_class=tokenizer,
            peft_config=peft_config,
        )

    return make


def _ganpo_logs(trainer: Any) -> list[dict[str, float]]:
    logs = [log for log in trainer.state.log_history if "loss" in log]
    return [{k: v for k, v in log.items() if k.startswith("ganpo/")} for log in logs]


def _trainable(trainer: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def _differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("rloo", [False, True], ids=["grpo", "rloo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_trains_with_finite_metrics_and_moves_the_policy_differently(
    make_trainer: Callable[..., Any], rloo: bool, beta: float
) -> None:
    """The issue's "done when": ``ganpo_plugins.attach(trainer, {"weight": 1.0})`` at β = 0 and β > 0,
    with gradient accumulation; finite ``ganpo/*`` every step; a policy other than plain GRPO's."""
    plain = make_trainer(rloo=rloo, beta=beta, gradient_accumulation_steps=2)
    initial = _trainable(plain)
    plain.train()
    trainer = make_trainer(rloo=rloo, beta=beta, gradient_accumulation_steps=2)
    handle = ganpo_plugins.attach(trainer, {"weight": 1.0, **SMALL_D})
    assert isinstance(handle, OnlineRLAttachment)
    # β = 0: TRL runs no reference, the adapter a frozen copy of the initial policy; β > 0: TRL's own.
    if beta:
        assert trainer.ref_model is not None and handle.reference is trainer.ref_model
    else:
        assert trainer.ref_model is None and handle.reference is not trainer.model
        ref = dict(handle.reference.named_parameters())
        assert all(torch.equal(ref[n], initial[n]) for n in initial)
    trainer.train()
    logs = _ganpo_logs(trainer)
    assert len(logs) == 2 and all(math.isfinite(v) for log in logs for v in log.values())
    for log in logs:  # each micro-batch's completions fed one side or neither
        sides = log["ganpo/completions_pos"] + log["ganpo/completions_neg"] + log["ganpo/completions_zero"]
        assert sides == GENERATIONS and log["ganpo/completions_pos"] > 0 and log["ganpo/completions_neg"] > 0
        assert log["ganpo/term_skipped"] == 0.0 and log["ganpo/adv_loss"] > 0
    regularizer = handle.runner.regularizer
    assert regularizer.disc_steps == regularizer.policy_steps == trainer.state.global_step == 2
    after_plain, after = _trainable(plain), _trainable(trainer)
    assert _differ(initial, after) and _differ(after_plain, after)


def test_lora_uses_the_adapter_disabled_policy_as_reference(make_trainer: Callable[..., Any]) -> None:
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    plain = make_trainer(peft_config=lora)
    initial = _trainable(plain)
    plain.train()
    trainer = make_trainer(peft_config=lora)
    handle = attach_regularizer(trainer, SMALL_D)
    assert handle.reference is None  # the PEFT base: the policy with its adapter disabled
    trainer.train()
    assert all(math.isfinite(v) for log in _ganpo_logs(trainer) for v in log.values())
    after = _trainable(trainer)
    assert _differ(initial, after) and _differ(_trainable(plain), after)


def test_one_discriminator_step_per_policy_step_whatever_reuses_a_generation(
    make_trainer: Callable[..., Any],
) -> None:
    """``num_iterations=2`` and ``steps_per_generation=2`` with accumulation 2: 4 policy steps from 2
    generations, 8 micro-steps; the discriminators step 4 times."""
    trainer = make_trainer(num_iterations=2, steps_per_generation=2, gradient_accumulation_steps=2, max_steps=4)
    handle = attach_regularizer(trainer, SMALL_D)
    calls: list[bool] = []
    original_build = handle.build_runner

    def build(args: Any, state: Any) -> None:
        original_build(args, state)
        runner_step = handle.runner.step

        def spy(batch: Any, info: Any) -> torch.Tensor:
            calls.append(info.is_boundary)
            return runner_step(batch, info)

        handle.runner.step = spy

    handle.build_runner = build
    trainer.train()
    assert calls == [False, True] * 4
    assert handle.runner.regularizer.disc_steps == trainer.state.global_step == 4


def test_an_empty_side_everywhere_leaves_the_run_identical_to_plain_grpo(make_trainer: Callable[..., Any]) -> None:
    """A constant reward: every advantage is 0, no completion joins a side. No discriminator step, no
    term, no NaN; the policy ends bit-identical to plain GRPO's (the regularizer draws nothing from
    the host's random stream)."""
    plain = make_trainer(reward_fn=constant_reward, beta=0.04)
    plain.train()
    trainer = make_trainer(reward_fn=constant_reward, beta=0.04)
    handle = attach_regularizer(trainer, SMALL_D)
    trainer.train()
    for log in _ganpo_logs(trainer):
        assert log["ganpo/skipped"] == 1.0 and log["ganpo/term_skipped"] == 1.0
        assert log["ganpo/completions_zero"] == GENERATIONS and log["ganpo/completions_pos"] == 0.0
    assert handle.runner.regularizer.disc_steps == 0
    assert not _differ(_trainable(plain), _trainable(trainer))


def test_the_term_is_scaled_for_accumulation_as_the_trainer_scales_its_loss(make_trainer: Callable[..., Any]) -> None:
    """Whatever TRL and transformers do (TRL ≥ 1.14 divides GRPO's loss itself, the Trainer divides
    RLOO's and TRL 1.9's), each micro-step's term reaches backward divided by the accumulation steps."""
    trainer = make_trainer(gradient_accumulation_steps=2)
    handle = attach_regularizer(trainer, SMALL_D)
    seen: dict[str, list[float]] = {"returned": [], "backward": [], "term": []}
    compute_loss, backward = trainer.compute_loss, trainer.accelerator.backward

    def spy_loss(*args: Any, **kwargs: Any) -> Any:
        loss = compute_loss(*args, **kwargs)
        seen["returned"].append(loss.item())
        return loss

    def spy_backward(loss: torch.Tensor, **kwargs: Any) -> Any:
        seen["backward"].append(loss.item())
        return backward(loss, **kwargs)

    trainer.compute_loss, trainer.accelerator.backward = spy_loss, spy_backward
    original_term = handle._term
    handle._term = lambda *a: seen["term"].append(t := original_term(*a)) or t
    trainer.train()
    scaled_by_adapter = handle._host_scales_for_accumulation(None)
    for returned, at_backward in zip(seen["returned"], seen["backward"], strict=True):
        # The Trainer divides exactly when the host's loss is not already divided, and never twice.
        assert at_backward == pytest.approx(returned if scaled_by_adapter else returned / 2, rel=1e-6)
    assert len(seen["term"]) == 4


def test_checkpoint_and_exact_resume(make_trainer: Callable[..., Any], tmp_path: Path) -> None:
    full = make_trainer(max_steps=4, save_strategy="steps", save_steps=2, output_dir=str(tmp_path / "full"))
    full_handle = attach_regularizer(full, SMALL_D)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert state_path(checkpoint).exists()
    resumed = make_trainer(max_steps=4, save_strategy="steps", save_steps=2, output_dir=str(tmp_path / "resumed"))
    handle = attach_regularizer(resumed, SMALL_D)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert_states_equal(handle.runner.regularizer.state_dict(), full_handle.runner.regularizer.state_dict())
    assert not _differ(_trainable(full), _trainable(resumed))


def test_evaluation_reports_the_term_and_leaves_the_state(make_trainer: Callable[..., Any], prompts: Dataset) -> None:
    trainer = make_trainer(per_device_eval_batch_size=GENERATIONS)
    trainer.eval_dataset = prompts.select(range(2))
    handle = attach_regularizer(trainer, SMALL_D)
    trainer.train()
    before = handle.runner.regularizer.state_dict()
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_ganpo/adv_loss"]) and "eval_ganpo/completions_pos" in metrics
    assert_states_equal(handle.runner.regularizer.state_dict(), before)


def test_detach_restores_plain_grpo(make_trainer: Callable[..., Any]) -> None:
    plain = make_trainer()
    plain.train()
    trainer = make_trainer()
    handle = attach_regularizer(trainer, SMALL_D)
    assert "compute_loss" in vars(trainer)
    handle.detach()
    assert "compute_loss" not in vars(trainer) and not hasattr(trainer, "_ganpo_attachment")
    trainer.train()
    assert not _differ(_trainable(plain), _trainable(trainer))


def test_bad_input_is_refused_by_name(make_trainer: Callable[..., Any], load_model: Callable[[], Any]) -> None:
    trainer = make_trainer()
    with pytest.raises(ValueError, match=r"ganpo\.preference_loss='logistic'.*remove ganpo\.preference_loss"):
        attach_regularizer(trainer, {"preference_loss": "logistic"})
    with_kl = make_trainer(beta=0.04)
    with pytest.raises(ValueError, match=r"ref_model= with beta=0\.04.*drop ref_model="):
        attach_regularizer(with_kl, SMALL_D, ref_model=load_model())
    assert "compute_loss" not in vars(trainer) and "compute_loss" not in vars(with_kl)


@pytest.mark.parametrize("installed", ["1.8.0", "2.0.0"])
def test_unsupported_trl_version_is_refused_with_the_range(
    make_trainer: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, installed: str
) -> None:
    trainer = make_trainer()
    monkeypatch.setattr(hosts, "installed_version", lambda name: installed if name == "trl" else None)
    with pytest.raises(hosts.HostVersionError, match=rf"trl {installed} is installed.*trl>=1\.9\.0,<2"):
        attach_regularizer(trainer, SMALL_D)
    assert "compute_loss" not in vars(trainer)


def test_the_on_line_names_the_sides_and_the_reference(make_trainer: Callable[..., Any], capsys: Any) -> None:
    attach_regularizer(make_trainer(), SMALL_D)
    out = capsys.readouterr()
    line = next(x for x in (out.out + out.err).splitlines() if "regularizer ON" in x)
    assert "GRPOTrainer" in line and "sides by advantage sign" in line and "frozen copy of the initial policy" in line
