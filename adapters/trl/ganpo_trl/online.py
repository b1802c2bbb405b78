"""Attach a latent regularizer to TRL's online DPO trainer (``trl.experimental.online_dpo``;
Guo et al., arXiv 2402.04792): ``L = L_PO(ρ) + λ · L_adv(h_θ±, h_r±)`` on the two completions the
policy sampled for each prompt (docs/methods.md, docs/online.md).

``OnlineDPOTrainer.training_step`` generates, runs the policy and reference ``_forward``,
computes the rewards, orders each pair and calls ``self.accelerator.backward(loss)`` itself:
there is no ``compute_loss`` to wrap. The attachment wraps, on the trainer *instance*
(:attr:`OnlineDPOAttachment.WRAPPED`; ``detach()`` undoes them): ``_forward`` (the tap on around
the policy and reference forwards, never during generation; the per-token log-probabilities and
masks kept), ``_calculate_rewards_from_functions`` (the reward tensor kept: TRL penalises it in
place, so at backward time it holds the final rewards and the pair order is TRL's own rule), and
``training_step`` (for the step, ``accelerator.backward`` replaces the loss it is given by
``L_PO + λ · L_adv``). Evaluation runs without the term: it has no preference pairs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ganpo_plugins import LatentBatch, PairLogps, RegularizerConfig
from ganpo_plugins.hf_trainer import TrainerAttachment
from ganpo_plugins.host_rules import check_host
from ganpo_plugins.hosts import require_host
from ganpo_plugins.report import announce_on

from .facts import facts_from_trainer
from .host import trainer_kind

__all__ = ["OnlineDPOAttachment"]


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

    def __init__(self, trainer: Any, config: RegularizerConfig) -> None:
        if trainer_kind(trainer) != "online_dpo":
            raise TypeError(f"OnlineDPOAttachment needs a trl OnlineDPOTrainer, got {type(trainer).__name__}")
        self.host = f"trl {require_host('trl')}"
        super().__init__(trainer, config)
        self.base = check_host(facts_from_trainer(trainer, "online_dpo"), config)
        self._in_step = False
        self._forwards: list[_Forward] = []
        self._rewards: Tensor | None = None
        self._step_loss: Tensor | None = None
        self._install(
            {
                "_forward": self._forward,
                "_calculate_rewards_from_functions": self._rewards_from_functions,
                "training_step": self._training_step,
            }
        )
        reference = "the trainer's " + ("reference model" if trainer.ref_model is not None else "adapter-disabled pass")
        announce_on(
            config, f"{type(trainer).__name__} ({self.host}, online: on-policy samples)", reference=reference,
            hidden="the decoder's final-norm output of the trainer's policy and reference forwards on the two samples",
            base=self.base.describe("TRL"), main=trainer.accelerator.is_main_process,
        )  # fmt: skip

    def _build(self, args: Any, state: Any) -> None:
        policy, ref = self.trainer.model, self.trainer.ref_model
        self._start(args, state, *((policy,) if ref is None else (policy, ref)), ref=ref)

    # -- the step ---------------------------------------------------------------------------

    def _forward(
        self, original: Callable[..., Any], model: Any, prompt_ids: Tensor, prompt_mask: Tensor,
        completion_ids: Tensor, completion_mask: Tensor, vision_inputs: Any = None,
    ) -> Tensor:  # fmt: skip
        if not self._in_step:
            return original(model, prompt_ids, prompt_mask, completion_ids, completion_mask, vision_inputs)
        assert self.runner is not None
        with self.runner.tap.capturing() as records:
            logprobs = original(model, prompt_ids, prompt_mask, completion_ids, completion_mask, vision_inputs)
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
        prompt_part, completion = prompt_mask[:, prompt_mask.shape[1] - kept :].bool(), completion_mask.bool()
        attention = torch.cat((prompt_part, completion), 1)
        response = torch.cat((torch.zeros_like(prompt_part), completion), 1)
        self._forwards.append(_Forward(logprobs, attention, response, completion))
        return logprobs

    def _rewards_from_functions(self, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Tensor:
        rewards = original(*args, **kwargs)
        if self._in_step:
            self._rewards = rewards  # the same tensor TRL penalises in place (missing EOS)
        return rewards

    def _training_step(self, original: Callable[..., Any], model: Any, inputs: Any, num_items: Any = None) -> Tensor:
        if self.runner is None:
            return original(model, inputs, num_items)
        accelerator = self.trainer.accelerator
        previous = vars(accelerator).get("backward")
        accelerator.backward = functools.partial(self._backward, accelerator.backward)
        self.runner.tap.take()
        self._in_step, self._step_loss = True, None
        try:
            original(model, inputs, num_items)
        finally:
            self._in_step = False
            self._forwards, self._rewards = [], None
            self.runner.tap.take()
            if previous is None:
                vars(accelerator).pop("backward", None)
            else:
                accelerator.backward = previous
        if self._step_loss is None:
            raise RuntimeError(
                f"{self.host}: OnlineDPOTrainer.training_step did not call accelerator.backward; this TRL version "
                "changed its online DPO step"
            )
        loss, self._step_loss = self._step_loss, None
        return loss.detach() / self.trainer.args.gradient_accumulation_steps

    def _backward(self, original: Callable[..., Any], loss: Tensor, **kwargs: Any) -> Any:
        if self._step_loss is None:  # the step's one policy backward
            loss = self._step_loss = self._regularized(loss)
        return original(loss, **kwargs)

    def _regularized(self, loss: Tensor) -> Tensor:
        """``L_PO + λ · L_reg`` for this step's pairs, ordered as TRL ordered them."""
        assert self.runner is not None
        if len(self._forwards) != 2 or self._rewards is None:
            raise RuntimeError(
                f"expected one policy and one reference _forward and one reward computation per step, saw "
                f"{len(self._forwards)} forwards and {'no' if self._rewards is None else 'one'} reward computation"
            )
        policy, ref = self._forwards  # TRL's order: the policy (with grad), then the reference
        policy_h, ref_h = self.runner.latents()
        first, second = self._rewards.split(self._rewards.shape[0] // 2)
        order = _chosen_then_rejected(first >= second)
        if self.base.loss is not None:
            loss = self._preference_loss(policy, ref, order)
        batch = LatentBatch.from_concatenated(
            policy_h[order], ref_h[order], policy.attention[order], policy.response[order]
        )
        return loss + self.runner.step(batch, self._step_info())

    def _preference_loss(self, policy: _Forward, ref: _Forward, order: Tensor) -> Tensor:
        """The configured base loss on TRL's own summed completion log-probabilities:
        ``logp(y|x) = Σ_t completion_mask_t · log π(y_t | x, y_<t)``."""
        mask = policy.completion[order]
        summed = [(f.logprobs[order] * mask).sum(1) for f in (policy, ref)]
        pair = PairLogps.from_concatenated(summed[0], summed[1].detach(), mask.sum(1))
        return self.base.loss(pair, self.trainer.beta, self.config.simpo_gamma).mean()


def _chosen_then_rejected(first_wins: Tensor) -> Tensor:
    """Row indices that put each prompt's chosen completion first, then each rejected one.

    TRL samples completion ``i`` and ``i + B`` for prompt ``i`` and prefers the first when
    ``first_half[i] >= second_half[i]`` (ties go to the first): chosen ``i + B·¬w_i``,
    rejected ``i + B·w_i``."""
    size = first_wins.shape[0]
    rows = torch.arange(size, device=first_wins.device)
    return torch.cat((rows + size * ~first_wins, rows + size * first_wins))
