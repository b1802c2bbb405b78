"""``ganpo_trl.attach_regularizer`` on real TRL 1.9 trainers, in process, tiny model, CPU.

Loss checks use one pair per step, so the per-step numbers TRL logs describe that pair:
``loss = f(βρ) + λ·L_adv`` with ``βρ`` the logged reward margin, ``f`` written out here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("trl.trainer", reason="needs TRL: tox -e trl-oldest / trl-newest")

from datasets import Dataset
from ganpo_trl import attach_regularizer
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments
from trl import DPOTrainer
from trl.experimental.cpo import CPOTrainer
from trl_args import dpo_args, simpo_args

from ganpo_plugins import StepInfo

SMALL_D = {"discriminator": {"d_model": 32, "num_heads": 4, "ffn_size": 64}}


class Spy(TrainerCallback):
    """Records every ``runner.step`` call (its batch and StepInfo) once the regularizer exists."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.calls: list[tuple[Any, StepInfo | None, bool]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        runner = self.handle.runner
        step = runner.step

        def spy(batch: Any, info: StepInfo | None) -> torch.Tensor:
            self.calls.append((batch, info, torch.is_grad_enabled()))
            return step(batch, info)

        runner.step = spy


def attach_with_spy(trainer: Any, config: dict[str, Any], **kwargs: Any) -> tuple[Any, Spy]:
    handle = attach_regularizer(trainer, config, **kwargs)
    spy = Spy(handle)
    trainer.add_callback(spy)  # after the attachment's own callback: the runner exists
    return handle, spy


def train_logs(trainer: Any) -> list[dict[str, Any]]:
    return [e for e in trainer.state.log_history if "loss" in e]


def assert_loss_is(trainer: Any, base: Callable[[dict[str, Any]], float]) -> None:
    for entry in train_logs(trainer):
        assert entry["loss"] == pytest.approx(base(entry) + entry["ganpo/adv_loss"], rel=1e-5, abs=1e-6), entry


# -- accumulation and evaluation ---------------------------------------------------------------


@pytest.fixture(scope="module")
def accumulated(tiny_assets: Path, tokenizer: Any, pairs: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A DPO run with gradient_accumulation_steps=2 for 3 optimiser steps."""
    model = AutoModelForCausalLM.from_pretrained(tiny_assets / "model")
    args = dpo_args(tmp_path_factory.mktemp("accum"), gradient_accumulation_steps=2, max_steps=3)
    trainer = DPOTrainer(
        model, args=args, train_dataset=pairs, eval_dataset=pairs.select(range(4)), processing_class=tokenizer
    )
    handle, spy = attach_with_spy(trainer, SMALL_D)
    trainer.train()
    return trainer, handle, spy


def test_discriminators_step_once_per_policy_optimiser_step(accumulated: Any) -> None:
    trainer, handle, spy = accumulated
    assert trainer.state.global_step == 3
    infos = [info for _, info, _ in spy.calls]
    assert (
        infos
        == [StepInfo(is_boundary=False, accumulation_steps=2), StepInfo(is_boundary=True, accumulation_steps=2)] * 3
    )
    regularizer = handle.runner.regularizer
    assert regularizer.disc_steps == 3
    for optimizer in regularizer.optimizers.values():
        assert {int(s["step"]) for s in optimizer.state.values()} == {3}  # AdamW stepped exactly 3 times
    logs = train_logs(trainer)
    assert len(logs) == 3 and all("ganpo/adv_loss" in e and "ganpo/d_pos/loss" in e for e in logs)


def test_evaluation_computes_the_term_without_stepping_discriminators(accumulated: Any) -> None:
    trainer, handle, spy = accumulated
    regularizer = handle.runner.regularizer
    before = {k: v.clone() for k, v in regularizer.discriminators.state_dict().items()}
    optim_before = {side: repr(opt.state_dict()) for side, opt in regularizer.optimizers.items()}
    mu_before, steps_before, calls_before = regularizer.mu.clone(), regularizer.disc_steps, len(spy.calls)
    metrics = trainer.evaluate()
    eval_calls = spy.calls[calls_before:]
    assert eval_calls and all(info is None and not grad for _, info, grad in eval_calls)
    assert "eval_ganpo/adv_loss" in metrics and "eval_ganpo/d_pos/loss" not in metrics
    assert regularizer.disc_steps == steps_before and torch.equal(regularizer.mu, mu_before)
    after = regularizer.discriminators.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {side: repr(opt.state_dict()) for side, opt in regularizer.optimizers.items()} == optim_before
    assert any("eval_ganpo/adv_loss" in e for e in trainer.state.log_history)  # logged by the trainer


# -- references and base losses ---------------------------------------------------------------------


def _base_hidden(model: Any, inputs: dict[str, torch.Tensor], trainer: Any) -> torch.Tensor:
    """The final hidden states of ``model``'s decoder, at the trainer's precision (DPOConfig's
    bf16 default makes the accelerator run forwards under CPU bf16 autocast)."""
    with torch.no_grad(), trainer.accelerator.autocast():
        return model.get_decoder()(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).last_hidden_state


def record_inputs(trainer: Any, method: str) -> list[dict[str, torch.Tensor]]:
    """Keep the inputs of every call of the (already wrapped) loss method."""
    seen: list[dict[str, torch.Tensor]] = []
    wrapped = getattr(trainer, method)

    def recorder(model: Any, inputs: dict[str, Any], *args: Any) -> Any:
        seen.append(inputs)
        return wrapped(model, inputs, *args)

    setattr(trainer, method, recorder)
    return seen


def test_lora_reference_is_the_adapter_disabled_forward(
    tmp_path: Path, tokenizer: Any, pairs: Dataset, load_model: Callable[[], Any]
) -> None:
    from peft import LoraConfig

    peft = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    trainer = DPOTrainer(
        load_model(), args=dpo_args(tmp_path, learning_rate=1e-2, max_steps=3), train_dataset=pairs,
        processing_class=tokenizer, peft_config=peft,
    )  # fmt: skip
    assert trainer.ref_model is None
    _, spy = attach_with_spy(trainer, SMALL_D)
    inputs = record_inputs(trainer, "_compute_loss")
    trainer.train()
    base = load_model()  # the frozen base weights LoRA leaves untouched
    batch, _, _ = spy.calls[-1]
    expected = _base_hidden(base, inputs[-1], trainer)
    chosen, rejected = expected.chunk(2)
    torch.testing.assert_close(batch.ref_chosen, chosen, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch.ref_rejected, rejected, rtol=1e-5, atol=1e-5)
    assert not batch.ref_chosen.requires_grad and batch.policy_chosen.requires_grad
    assert (batch.policy_chosen - chosen).abs().max() > 1e-3  # the adapter moved the policy


def test_training_ends_with_the_closing_summary(
    tmp_path: Path,
    tokenizer: Any,
    pairs: Dataset,
    load_model: Callable[[], Any],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    args = dpo_args(tmp_path, gradient_accumulation_steps=2)  # 2 optimiser steps, 4 micro-steps
    trainer = DPOTrainer(load_model(), args=args, train_dataset=pairs, processing_class=tokenizer)
    with caplog.at_level(logging.INFO, logger="ganpo_plugins"):
        attach_regularizer(trainer, SMALL_D)
        trainer.train()
    printed = caplog.text + capfd.readouterr().err
    last = train_logs(trainer)[-1]
    assert printed.count("ganpo regularizer ON (weight λ=1.0) in DPOTrainer") == 2  # when attached, and at the end
    accuracies = f"D+ accuracy {last['ganpo/d_pos/accuracy']:.3f}"
    assert f"ganpo: run summary at the last log (step 2): {accuracies}" in printed
    assert "skipped in 4 training micro-steps of this process: 0 discriminator updates, 0 policy terms" in printed


def test_hinge_is_trls_own_hinge(tmp_path: Path, tokenizer: Any, pairs: Dataset, load_model: Callable[[], Any]) -> None:
    trainer = DPOTrainer(
        load_model(), args=dpo_args(tmp_path, max_steps=3), train_dataset=pairs, processing_class=tokenizer
    )
    attach_regularizer(trainer, {**SMALL_D, "preference_loss": "hinge"})
    assert trainer.loss_types == ["hinge"]
    trainer.train()
    assert_loss_is(trainer, lambda e: max(0.0, 1 - e["rewards/margins"]))


def test_precomputed_reference_gets_its_own_forward_and_a_gpo_loss(
    tmp_path: Path, tokenizer: Any, pairs: Dataset, load_model: Callable[[], Any], caplog: pytest.LogCaptureFixture
) -> None:
    args = dpo_args(tmp_path, precompute_ref_log_probs=True, max_steps=3)
    trainer = DPOTrainer(load_model(), args=args, train_dataset=pairs, processing_class=tokenizer)
    assert trainer.ref_model is None
    with caplog.at_level(logging.WARNING, logger="ganpo_trl.attach"):
        handle, spy = attach_with_spy(trainer, {**SMALL_D, "preference_loss": "exponential"})
    assert "frozen copy of the policy" in caplog.text and handle.reference is not None
    inputs = record_inputs(trainer, "_compute_loss")
    trainer.train()
    assert_loss_is(trainer, lambda e: math.exp(-e["rewards/margins"]))
    assert any(abs(e["rewards/margins"]) > 1e-5 for e in train_logs(trainer))
    initial = load_model()
    for (batch, _, _), seen in zip(spy.calls, inputs, strict=True):
        chosen, _ = _base_hidden(initial, seen, trainer).chunk(2)
        torch.testing.assert_close(batch.ref_chosen, chosen, rtol=1e-5, atol=1e-5)


def test_simpo_on_cpo_trainer(tmp_path: Path, tokenizer: Any, pairs: Dataset, load_model: Callable[[], Any]) -> None:
    gamma, beta = 0.5, 2.0
    args = simpo_args(tmp_path, simpo_gamma=gamma, beta=beta)
    trainer = CPOTrainer(load_model(), args=args, train_dataset=pairs, processing_class=tokenizer)
    with pytest.raises(ValueError, match="SimPO/CPO trainer never computes"):
        attach_regularizer(trainer, {"preference_loss": "savage"})
    reference = load_model()
    handle, spy = attach_with_spy(trainer, {**SMALL_D, "preference_loss": "simpo"}, ref_model=reference)
    assert handle.own_reference and handle.reference is reference
    trainer.train()

    def simpo(e: dict[str, Any]) -> float:
        return math.log1p(math.exp(-(beta * (e["logps/chosen"] - e["logps/rejected"]) - gamma)))

    assert_loss_is(trainer, simpo)
    assert handle.runner.regularizer.disc_steps == 3
    assert all(info is not None and info.is_boundary for _, info, _ in spy.calls)


def test_detach_restores_the_trainer(
    tmp_path: Path, tokenizer: Any, pairs: Dataset, load_model: Callable[[], Any]
) -> None:
    trainer = DPOTrainer(
        load_model(), args=dpo_args(tmp_path, max_steps=1), train_dataset=pairs, processing_class=tokenizer
    )
    handle = attach_regularizer(trainer, SMALL_D)
    handle.detach()
    assert not {"_compute_loss", "log", "save_model", "evaluation_loop"} & trainer.__dict__.keys()
    trainer.train()
    assert handle.runner is None and "ganpo/adv_loss" not in train_logs(trainer)[0]


# -- refusals ----------------------------------------------------------------------------------------


def test_ref_model_only_where_the_trainer_runs_no_reference(
    tmp_path: Path, tokenizer: Any, pairs: Dataset, load_model: Callable[[], Any]
) -> None:
    trainer = DPOTrainer(load_model(), args=dpo_args(tmp_path), train_dataset=pairs, processing_class=tokenizer)
    with pytest.raises(ValueError, match="pass the reference to the trainer instead"):
        attach_regularizer(trainer, SMALL_D, ref_model=load_model())


def test_only_dpo_and_cpo_trainers(tmp_path: Path, load_model: Callable[[], Any]) -> None:
    trainer = Trainer(load_model(), args=TrainingArguments(str(tmp_path), use_cpu=True, report_to=[]))
    with pytest.raises(TypeError, match=r"supports trl\.DPOTrainer, trl\.experimental\.cpo\.CPOTrainer"):
        attach_regularizer(trainer, {})


@pytest.mark.parametrize(
    ("overrides", "config", "message"),
    [
        ({"loss_type": ["ipo"]}, {"preference_loss": "squared"}, r"loss_type=\['ipo'\] both choose the base loss"),
        ({"label_smoothing": 0.1}, {"preference_loss": "logistic"}, "label_smoothing=0.1 changes the base loss"),
        ({"use_weighting": True}, {"preference_loss": "savage"}, "use_weighting=True changes"),
        ({}, {"preference_loss": "simpo"}, "needs the margin: set ganpo.simpo_gamma"),
        ({}, {"simpo_gamma": 0.5}, "only ganpo.preference_loss simpo reads it"),
    ],
)
def test_trainer_settings_that_cannot_run_faithfully_are_refused(
    tmp_path: Path, tokenizer: Any, pairs: Dataset, load_model: Callable[[], Any], overrides: dict[str, Any],
    config: dict[str, Any], message: str,
) -> None:  # fmt: skip
    args = dpo_args(tmp_path, **overrides)
    trainer = DPOTrainer(load_model(), args=args, train_dataset=pairs, processing_class=tokenizer)
    with pytest.raises(ValueError, match=message):
        attach_regularizer(trainer, {**SMALL_D, **config})
    assert "_ganpo_attachment" not in vars(trainer)  # a refused attach leaves nothing behind
    attach_regularizer(trainer, SMALL_D).detach()


@pytest.mark.parametrize(
    ("pref", "trl_loss", "ours"),
    [
        (None, None, None),
        ("logistic", "sigmoid", None),
        ("hinge", "hinge", None),
        ("squared", None, "squared"),  # not TRL's ipo: a different function of ρ and β
        ("savage", None, "savage"),
    ],
)
def test_base_loss_goes_to_trl_only_where_the_formula_is_the_same(
    tmp_path: Path, tokenizer: Any, pairs: Dataset, load_model: Callable[[], Any], pref: str | None,
    trl_loss: str | None, ours: str | None,
) -> None:  # fmt: skip
    trainer = DPOTrainer(load_model(), args=dpo_args(tmp_path), train_dataset=pairs, processing_class=tokenizer)
    handle = attach_regularizer(trainer, {**SMALL_D, "preference_loss": pref})
    assert handle.base.host_loss_type == trl_loss
    assert (handle.base.loss.name if handle.base.loss else None) == ours
    assert trainer.loss_types == [trl_loss or "sigmoid"]
    handle.detach()
    assert trainer.loss_types == ["sigmoid"]
