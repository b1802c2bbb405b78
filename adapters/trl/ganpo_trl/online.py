"""Attach a latent regularizer to TRL's online DPO trainer (``trl.experimental.online_dpo``;
Guo et al., arXiv 2402.04792): ``L = L_PO(ρ) + λ · L_adv(h_θ±, h_r±)`` on the two completions the
policy sampled for each prompt (docs/methods.md, docs/online.md).

``OnlineDPOTrainer.training_step`` generates, runs the policy and reference ``_forward``, computes
the rewards, orders each pair and calls ``accelerator.backward(loss)`` itself, so the term is added
at that backward (:meth:`~ganpo_plugins.adapter_kit.hf_trainer.TrainerAttachment.step_with_term`). Wrapped on
the trainer instance (:attr:`OnlineDPOAttachment.WRAPPED`): ``_forward`` (the tap on around the
policy and reference forwards, never during generation; log-probabilities and masks kept) and
``_calculate_rewards_from_functions`` (the reward tensor kept: TRL penalises it in place, so at
backward time it holds the final rewards and the pair order is TRL's own rule).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor

from ganpo_plugins.adapter_kit import (
    LatentBatch,
    PairLogps,
    RegularizerConfig,
    TrainerAttachment,
    announce_on,
    check_host,
    chosen_then_rejected,
    prompt_completion_masks,
    require_host,
)

from .facts import facts_from_trainer

__all__ = ["OnlineDPOAttachment"]


class OnlineDPOAttachment(TrainerAttachment):
    """A regularizer attached to one ``OnlineDPOTrainer``; ``runner`` is ``None`` until training begins."""

    WRAPPED: ClassVar[dict[str, str]] = {
        "trainer._forward, ._calculate_rewards_from_functions, .training_step": "instance attributes removed",
        "trainer.accelerator.backward (only while a training step runs)": "instance attribute removed (or the "
        "previous one restored) when the step ends",
        **TrainerAttachment.SHARED_WRAPPED,
    }

    def __init__(self, trainer: Any, config: RegularizerConfig) -> None:
        self.host = f"trl {require_host('trl')}"
        super().__init__(trainer, config)
        self.base = check_host(facts_from_trainer(trainer, "online_dpo"), config)
        # This step's (log-probabilities [2B, Tc], attention [2B, T], response [2B, T]) per _forward.
        self._forwards: list[tuple[Tensor, Tensor, Tensor]] = []
        self._rewards: Tensor | None = None
        self.install(
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

    def build_runner(self, args: Any, state: Any) -> None:
        policy, ref = self.trainer.model, self.trainer.ref_model
        self.start_runner(args, state, *((policy,) if ref is None else (policy, ref)), ref=ref)

    def _forward(self, original: Callable[..., Any], model: Any, prompt_ids: Tensor, prompt_mask: Tensor,
                 completion_ids: Tensor, completion_mask: Tensor, vision_inputs: Any = None) -> Tensor:  # fmt: skip
        args = (model, prompt_ids, prompt_mask, completion_ids, completion_mask, vision_inputs)
        if not self.in_step:
            return original(*args)
        assert self.runner is not None
        with self.runner.tap.capturing() as records:
            logprobs = original(*args)
        if len(records) != 1:
            raise RuntimeError(f"expected one decoder call per _forward, captured {len(records)}")
        # TRL truncates the prompt on the left to max_length; the hidden states say by how much.
        masks = prompt_completion_masks(prompt_mask, completion_mask, records[0].hidden.shape[1])
        self._forwards.append((logprobs, *masks))
        return logprobs

    def _rewards_from_functions(self, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Tensor:
        rewards = original(*args, **kwargs)
        if self.in_step:
            self._rewards = rewards  # the same tensor TRL penalises in place (missing EOS)
        return rewards

    def _training_step(self, original: Callable[..., Any], model: Any, inputs: Any, num_items: Any = None) -> Tensor:
        if self.runner is None:
            return original(model, inputs, num_items)
        try:
            return self.step_with_term(original, (model, inputs, num_items), self._regularized)
        finally:
            self._forwards, self._rewards = [], None

    def _regularized(self, loss: Tensor) -> Tensor:
        """``L_PO + λ · L_reg`` for this step's pairs, ordered as TRL ordered them."""
        assert self.runner is not None
        if len(self._forwards) != 2 or self._rewards is None:
            raise RuntimeError(
                f"expected one policy and one reference _forward and one reward computation per step, saw "
                f"{len(self._forwards)} forwards and {'no' if self._rewards is None else 'one'} reward computation"
            )
        (policy_logps, attention, response), (ref_logps, _, _) = self._forwards  # TRL's order: policy, reference
        policy_h, ref_h = self.runner.latents()
        first, second = self._rewards.split(self._rewards.shape[0] // 2)
        order = chosen_then_rejected(first >= second)  # TRL's rule: ties go to the first sample
        if self.base.loss is not None:
            # logp(y|x) = Σ_t completion_mask_t · log π(y_t | x, y_<t), on TRL's own per-token log-probabilities
            completion = response[order][:, -policy_logps.shape[1] :]
            summed = [(logps[order] * completion).sum(1) for logps in (policy_logps, ref_logps)]
            pair = PairLogps.from_concatenated(summed[0], summed[1].detach(), completion.sum(1))
            loss = self.base.loss(pair, self.trainer.beta, self.config.simpo_gamma).mean()
        batch = LatentBatch.from_concatenated(policy_h[order], ref_h[order], attention[order], response[order])
        return loss + self.runner.step(batch, self.step_info())
