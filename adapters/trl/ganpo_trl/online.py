"""Attach a latent regularizer to TRL's online DPO trainer (``trl.experimental.online_dpo``).

    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
    from ganpo_trl import attach_regularizer

    trainer = OnlineDPOTrainer(model, reward_funcs=reward, args=OnlineDPOConfig(...), train_dataset=prompts,
                               processing_class=tokenizer)
    handle = attach_regularizer(trainer, {"regularizer": "ganpo", "weight": 1.0})
    trainer.train()

Online DPO (Guo et al., arXiv 2402.04792) samples two completions per prompt from the current
policy, ranks them with the reward, and takes a DPO step on the pair. GANPO (arXiv 2601.22083)
adds its term ``λ · L_adv`` on the policy's and the reference's last-layer hidden states of
those two completions: ``L = L_PO(ρ) + λ · L_adv(h_θ±, h_r±)`` (docs/methods.md, docs/online.md).

``OnlineDPOTrainer.training_step`` generates, runs the policy and the reference ``_forward``,
computes the rewards, orders each pair and calls ``self.accelerator.backward(loss)`` itself:
there is no ``compute_loss`` to wrap. The attachment therefore wraps, on the trainer *instance*:

- ``_forward``: turns the hidden-state tap on around the policy forward (with gradient) and
  the reference forward (no gradient; the reference model, or the PEFT policy with its adapter
  disabled) — never during generation — and keeps the per-token completion log-probabilities
  it returns, with the masks of the sequence it ran;
- ``_calculate_rewards_from_functions``: keeps the reward tensor it returns. TRL subtracts the
  missing-EOS penalty from that same tensor in place, so at backward time it holds the final
  rewards; the pair order is then TRL's own rule, ``chosen = first_half >= second_half``;
- ``training_step``: for the duration of the step, ``trainer.accelerator.backward`` is an
  instance attribute that replaces the loss it is given by ``L_PO + λ · L_adv`` (``L_PO``:
  TRL's loss, or the configured ``preference_loss`` computed from the kept log-probabilities)
  before calling the accelerator's own ``backward``; the step returns that loss (so the logged
  ``loss`` includes the term);
- ``log``, ``save_model``, ``_load_optimizer_and_scheduler`` and a build callback, shared with
  the offline adapter (:class:`ganpo_trl.trainer_attachment.TrainerAttachment`).

Every wrapped object is listed in :attr:`OnlineDPOAttachment.WRAPPED`; ``detach()`` undoes them.
Discriminators step at accumulation boundaries (``accelerator.sync_gradients``). Evaluation
runs without the term: online DPO's evaluation has no preference pairs to regularize.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ganpo_plugins import (
    LatentBatch,
    PairLogps,
    PreferenceLoss,
    RegularizerConfig,
    StepInfo,
)
from ganpo_plugins.registry import resolve
from ganpo_plugins.report import announce
from ganpo_plugins.runner import split_policy_reference

from .trainer_attachment import TrainerAttachment

__all__ = ["OnlineDPOAttachment", "is_online_dpo_trainer"]

# GANPO preference losses that OnlineDPOTrainer computes itself with exactly the same formula:
# its ``sigmoid`` loss is ``−log σ(βρ) = log(1 + e^(−βρ))`` on summed completion log-probabilities.
_TRL_EQUIVALENT = {"logistic": "sigmoid"}


def is_online_dpo_trainer(trainer: Any) -> bool:
    """Whether ``trainer`` is TRL's ``OnlineDPOTrainer`` or a subclass (decided from the class
    hierarchy's module names, so nothing of TRL is imported)."""
    return any(
        cls.__module__.startswith("trl.") and cls.__name__ == "OnlineDPOTrainer" for cls in type(trainer).__mro__
    )


@dataclass(frozen=True)
class _Forward:
    """One ``_forward`` call of a training step: per-token completion log-probabilities
    ``[2B, Tc]``, and the attention and completion masks of the sequence it ran ``[2B, T]``."""

    logprobs: Tensor
    attention: Tensor
    response: Tensor
    completion: Tensor


class OnlineDPOAttachment(TrainerAttachment):
    """A regularizer attached to one ``OnlineDPOTrainer`` (the public shape of
    :class:`~ganpo_trl.attach.GANPOAttachment`: ``runner``, :attr:`WRAPPED`, ``save``, ``detach``).

    ``runner`` is ``None`` until training begins.
    """

    #: Every host object the attachment changes, and how ``detach()`` undoes it.
    WRAPPED: ClassVar[dict[str, str]] = {
        "trainer._forward, trainer._calculate_rewards_from_functions, trainer.training_step": "instance attributes "
        "removed",
        "trainer.accelerator.backward (only while a training step runs)": "instance attribute removed (or the "
        "previous one restored) when the step ends",
        **TrainerAttachment.SHARED_WRAPPED,
    }

    def __init__(self, trainer: Any, config: RegularizerConfig, ref_model: Any = None) -> None:
        if not is_online_dpo_trainer(trainer):
            raise TypeError(f"OnlineDPOAttachment needs a trl OnlineDPOTrainer, got {type(trainer).__name__}")
        if ref_model is not None:
            raise ValueError(
                "ref_model= is for trainers that run no reference forward; OnlineDPOTrainer runs its own (its "
                "ref_model, or the adapter-disabled policy), whose hidden states the regularizer uses: pass the "
                "reference to the trainer instead"
            )
        super().__init__(trainer, config)
        self.base: PreferenceLoss | None = _base_loss(trainer.args.loss_type, config)
        self._in_step = False
        self._forwards: list[_Forward] = []
        self._rewards: Tensor | None = None
        self._step_loss: Tensor | None = None
        self._install(
            {
                "_forward": self._wrap_forward,
                "_calculate_rewards_from_functions": self._wrap_rewards,
                "training_step": self._wrap_training_step,
            }
        )
        base = (
            f"{self.base.name} (computed by ganpo_plugins from the trainer's completion log-probabilities)"
            if self.base is not None
            else f"the trainer's own (loss_type={trainer.args.loss_type!r})"
        )
        reference = "the reference model's" if trainer.ref_model is not None else "the adapter-disabled policy's"
        announce(
            f"ganpo: {config.regularizer} regularizer ON (weight λ={config.weight}) in {type(trainer).__name__} "
            f"(trl {self.trl_version}, online: on-policy samples); base loss: {base}; hidden states: the decoder's "
            f"final-norm output of the trainer's policy forward and {reference} forward on the two sampled "
            "completions; the logged `loss` includes λ·L_reg (ganpo/* metrics: docs/metrics.md)",
            is_main_process=trainer.accelerator.is_main_process,
        )

    def _build(self, args: Any, state: Any) -> None:
        if self.runner is not None:
            return
        policy, ref = self.trainer.model, self.trainer.ref_model
        self._start(args, state, *((policy,) if ref is None else (policy, ref)), ref=ref)

    # -- the step ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tap_on(self) -> Iterator[None]:
        assert self.runner is not None
        self.runner.tap.enabled = True
        try:
            yield
        finally:
            self.runner.tap.enabled = False

    def _wrap_forward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def _forward(
            model: Any,
            prompt_ids: Tensor,
            prompt_mask: Tensor,
            completion_ids: Tensor,
            completion_mask: Tensor,
            vision_inputs: Any = None,
        ) -> Tensor:
            if not self._in_step:
                return original(model, prompt_ids, prompt_mask, completion_ids, completion_mask, vision_inputs)
            assert self.runner is not None
            seen = len(self.runner.tap.records)
            with self._tap_on():
                logprobs = original(model, prompt_ids, prompt_mask, completion_ids, completion_mask, vision_inputs)
            records = self.runner.tap.records[seen:]
            if len(records) != 1:
                raise RuntimeError(f"expected one decoder call per _forward, captured {len(records)}")
            # TRL truncates the prompt on the left to max_length; the hidden states say by how much.
            kept = records[0].hidden.shape[1] - completion_mask.shape[1]
            if not 0 <= kept <= prompt_mask.shape[1]:
                raise RuntimeError(
                    f"hidden states of length {records[0].hidden.shape[1]} do not cover prompt {prompt_mask.shape[1]} "
                    f"+ completion {completion_mask.shape[1]} tokens (vision inputs or virtual tokens are not "
                    "supported): the regularizer needs one hidden state per input token"
                )
            prompt_part = prompt_mask[:, prompt_mask.shape[1] - kept :].bool()
            completion = completion_mask.bool()
            self._forwards.append(
                _Forward(
                    logprobs,
                    torch.cat((prompt_part, completion), 1),
                    torch.cat((torch.zeros_like(prompt_part), completion), 1),
                    completion,
                )
            )
            return logprobs

        return _forward

    def _wrap_rewards(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def _calculate_rewards_from_functions(*args: Any, **kwargs: Any) -> Tensor:
            rewards = original(*args, **kwargs)
            if self._in_step:
                self._rewards = rewards  # the same tensor TRL penalises in place (missing EOS)
            return rewards

        return _calculate_rewards_from_functions

    def _wrap_training_step(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def training_step(model: Any, inputs: dict[str, Any], num_items_in_batch: int | None = None) -> Tensor:
            if self.runner is None:
                return original(model, inputs, num_items_in_batch)
            accelerator = self.trainer.accelerator
            previous = accelerator.__dict__.get("backward")
            accelerator.backward = self._make_backward(accelerator.backward)
            self.runner.tap.take()
            self._in_step, self._step_loss = True, None
            try:
                original(model, inputs, num_items_in_batch)
            finally:
                self._in_step = False
                self._forwards, self._rewards = [], None
                self.runner.tap.take()
                if previous is None:
                    accelerator.__dict__.pop("backward", None)
                else:
                    accelerator.backward = previous
            if self._step_loss is None:
                raise RuntimeError(
                    f"trl {self.trl_version}: OnlineDPOTrainer.training_step did not call accelerator.backward; "
                    "this TRL version changed its online DPO step"
                )
            loss, self._step_loss = self._step_loss, None
            return loss.detach() / self.trainer.args.gradient_accumulation_steps

        return training_step

    def _make_backward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def backward(loss: Tensor, **kwargs: Any) -> Any:
            if self._step_loss is None:  # the step's one policy backward
                loss = self._regularized(loss)
                self._step_loss = loss
            return original(loss, **kwargs)

        return backward

    def _regularized(self, loss: Tensor) -> Tensor:
        """``L_PO + λ · L_reg`` for this step's pairs, ordered as TRL ordered them."""
        assert self.runner is not None
        if len(self._forwards) != 2 or self._rewards is None:
            raise RuntimeError(
                f"expected one policy and one reference _forward and one reward computation per step, saw "
                f"{len(self._forwards)} forwards and {'no' if self._rewards is None else 'one'} reward computation"
            )
        policy, ref = self._forwards  # TRL's order: the policy (with grad), then the reference
        policy_h, ref_h = split_policy_reference(self.runner.tap.take())
        first, second = self._rewards.split(self._rewards.shape[0] // 2)
        order = _chosen_then_rejected(first >= second)
        if self.base is not None:
            loss = self._preference_loss(policy, ref, order)
        trainer = self.trainer
        batch = LatentBatch.from_concatenated(
            policy_h[order], ref_h[order].to(policy_h.device), policy.attention[order], policy.response[order]
        )
        accumulation = getattr(trainer, "current_gradient_accumulation_steps", trainer.args.gradient_accumulation_steps)
        info = StepInfo(is_boundary=bool(trainer.accelerator.sync_gradients), accumulation_steps=int(accumulation))
        return loss + self.runner.step(batch, info)

    def _preference_loss(self, policy: _Forward, ref: _Forward, order: Tensor) -> Tensor:
        """The configured base loss on TRL's own summed completion log-probabilities:
        ``logp(y|x) = Σ_t completion_mask_t · log π(y_t | x, y_<t)``."""
        assert self.base is not None
        mask = policy.completion[order]
        policy_chosen, policy_rejected = (policy.logprobs[order] * mask).sum(1).chunk(2)
        ref_chosen, ref_rejected = (ref.logprobs[order].detach() * mask).sum(1).chunk(2)
        chosen_len, rejected_len = mask.sum(1).chunk(2)
        pair = PairLogps(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_len, rejected_len)
        return self.base(pair, self.trainer.beta, self.config.simpo_gamma).mean()


def _chosen_then_rejected(first_wins: Tensor) -> Tensor:
    """Row indices that put each prompt's chosen completion first, then each rejected one.

    TRL samples completion ``i`` and ``i + B`` for prompt ``i`` and prefers the first when
    ``first_half[i] >= second_half[i]`` (ties go to the first): chosen ``i + B·¬w_i``,
    rejected ``i + B·w_i``."""
    size = first_wins.shape[0]
    rows = torch.arange(size, device=first_wins.device)
    return torch.cat((rows + size * ~first_wins, rows + size * first_wins))


def _base_loss(loss_type: str, config: RegularizerConfig) -> PreferenceLoss | None:
    """The base loss the adapter computes, or ``None`` when the trainer's own is it."""
    pref = config.preference_loss
    if pref is None or _TRL_EQUIVALENT.get(pref) == loss_type:
        return None
    if loss_type != "sigmoid":
        raise ValueError(
            f"ganpo.preference_loss={pref!r} and the trainer's loss_type={loss_type!r} both choose the base loss; "
            "leave loss_type at its default (sigmoid) or unset ganpo.preference_loss"
        )
    if pref == "simpo" and config.simpo_gamma is None:
        raise ValueError("ganpo.preference_loss='simpo' needs the margin: set ganpo.simpo_gamma")
    return resolve("preference_loss", pref)
