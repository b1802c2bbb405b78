"""Attach a latent regularizer to TRL's group-based online RL trainers, ``trl.GRPOTrainer`` and
``trl.RLOOTrainer`` (and their subclasses, Axolotl's among them): ``L = L_host + λ · L_adv`` with the
two sides of each micro-batch signed by the trainer's own advantages (docs/methods.md, "GANPO for
group-based online RL"; the project's extension, not the paper's):

    S+ = {i : A_i > 0},  S− = {i : A_i < 0}  (A_i = 0 joins neither side; the sides are unpaired)

    trainer = GRPOTrainer(model, reward_funcs=reward, args=GRPOConfig(...), train_dataset=prompts)
    ganpo_plugins.attach(trainer, {"weight": 1.0})
    trainer.train()

Wrapped on the trainer instance (:attr:`OnlineRLAttachment.WRAPPED`): ``compute_loss`` only. TRL
generates, scores and computes advantages as it always does (the tap is off during generation);
its loss forward on the micro-batch fills the tap; the adapter then runs the reference under
no-grad on the same tokens and adds the term. The discriminators step at the trainer's
accumulation boundaries, so once per policy optimiser step, whatever ``num_iterations`` and
``steps_per_generation`` reuse a generation for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from ganpo_plugins.adapter_kit import (
    LatentBatch,
    RegularizerConfig,
    TrainerAttachment,
    announce_on,
    prompt_completion_masks,
    require_host,
    require_weights,
)

from .kinds import trainer_kind
from .reference import reference_hidden

__all__ = ["OnlineRLAttachment", "online_rl_problems"]


def online_rl_problems(config: RegularizerConfig, *, ours: Callable[[str], str] = "ganpo.{}".format) -> list[str]:
    """What a regularizer config may not ask of a GRPO/RLOO run, each naming the key and the fix
    (``ours``: how a ``ganpo`` key is spelt in the user's config). Checked before any model loads
    where the host allows (Axolotl), else at attach."""
    out = []
    if config.preference_loss is not None:
        out.append(
            f"{ours('preference_loss')}={config.preference_loss!r}: GRPO/RLOO train on the trainer's own "
            f"advantage-weighted loss, there is no preference loss to replace; remove {ours('preference_loss')}"
        )
    if config.simpo_gamma is not None:
        out.append(f"{ours('simpo_gamma')}={config.simpo_gamma}: no SimPO loss in GRPO/RLOO; remove it")
    return out


class OnlineRLAttachment(TrainerAttachment):
    """A regularizer attached to one ``GRPOTrainer`` or ``RLOOTrainer``; ``reference`` is the model
    the adapter's reference forward runs (``None``: the PEFT policy with its adapter disabled)."""

    WRAPPED: ClassVar[dict[str, str]] = {
        "trainer.compute_loss": "instance attribute removed",
        **TrainerAttachment.SHARED_WRAPPED,
    }

    def __init__(self, trainer: Any, config: RegularizerConfig, ref_model: Any = None) -> None:
        self.kind = trainer_kind(trainer)
        if self.kind not in ("grpo", "rloo"):
            raise TypeError(f"OnlineRLAttachment takes trl.GRPOTrainer, trl.RLOOTrainer, got {type(trainer).__name__}")
        self.host = f"trl {require_host('trl')}"
        super().__init__(trainer, config)
        problems = online_rl_problems(config)
        if problems:
            raise ValueError("; ".join(problems))
        if ref_model is not None and trainer.beta != 0.0:
            raise ValueError(
                f"ref_model= with beta={trainer.beta}: this {type(trainer).__name__} runs its own reference for the KL "
                "term, and the regularizer uses that one (two references would pull the policy two ways); drop "
                "ref_model=, or set beta=0.0 to choose the regularizer's reference yourself"
            )
        # β > 0: TRL's ref_model (or, under PEFT, the adapter-disabled policy); β = 0: TRL loads none.
        self.reference = self.choose_reference(ref_model)
        self.install({"compute_loss": self._loss})
        if self.reference is None:
            reference = "the PEFT policy with its adapter disabled"
        elif self.reference is trainer.ref_model:
            reference = "the trainer's reference model (the one its KL term uses)"
        else:
            reference = "the ref_model passed" if ref_model is not None else "a frozen copy of the initial policy"
        announce_on(
            config, f"{type(trainer).__name__} ({self.host}, online RL: sides by advantage sign)",
            base=f"the trainer's own {self.kind.upper()} loss (computed by TRL)",
            reference=f"{reference}, an extra no-grad forward on each micro-batch",
            hidden="the decoder's final-norm output of the trainer's loss forward (never of generation)",
            main=trainer.accelerator.is_main_process,
        )  # fmt: skip

    def build_runner(self, args: Any, state: Any) -> None:
        if self.reference is not None:
            require_weights(self.reference)
        self.start_runner(args, state, self.trainer.model, ref=self.reference)

    def _loss(
        self, original: Callable[..., Any], model: Any, inputs: dict[str, Any], return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:  # fmt: skip
        call = (model, inputs, return_outputs, num_items_in_batch)
        if self.runner is None:
            return original(*call)
        loss = self.captured(original, *call)
        return loss + self._term(inputs, num_items_in_batch)

    def _term(self, inputs: dict[str, Any], num_items_in_batch: Any) -> Tensor:
        """``λ · L_adv`` on this micro-batch's advantage-signed sides, scaled for accumulation as the
        host scales its own loss."""
        assert self.runner is not None
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat((prompt_ids, completion_ids), 1)
        attention_mask = torch.cat((prompt_mask, completion_mask), 1)

        def reference() -> Tensor:
            return reference_hidden(self.trainer, self.reference, input_ids, attention_mask)

        policy_h, ref_h = self.runner.latents(tuple(input_ids.shape), reference)
        length = policy_h.shape[1]
        attention, _ = prompt_completion_masks(prompt_mask, completion_mask, length)
        # The policy's own tokens: a multi-turn trainer's tool outputs (tool_mask 0) are not.
        sampled = completion_mask * inputs["tool_mask"] if "tool_mask" in inputs else completion_mask
        _, response = prompt_completion_masks(prompt_mask, sampled, length)
        advantages = inputs["advantages"]
        if advantages.dim() == 2:  # a subclass's per-token advantages: the side is the sign of their mean
            advantages = (advantages * sampled).sum(1) / sampled.sum(1).clamp_min(1)
        positive, negative = advantages > 0, advantages < 0
        batch = LatentBatch.from_sides(policy_h, ref_h, attention, response, positive, negative)
        info = self.step_info()
        term = self.runner.step(batch, info)
        counts = {"completions_pos": positive.sum(), "completions_neg": negative.sum()}
        counts["completions_zero"] = advantages.numel() - counts["completions_pos"] - counts["completions_neg"]
        self.runner.add_metrics({k: float(v) for k, v in counts.items()}, "eval" if info is None else "train")
        if info is not None and self._host_scales_for_accumulation(num_items_in_batch):
            term = term / info.accumulation_steps  # GRPO divides its own loss; RLOO leaves it to the Trainer
        return term

    def _host_scales_for_accumulation(self, num_items_in_batch: Any) -> bool:
        """Whether the loss the trainer's ``compute_loss`` returns is already divided by the
        accumulation steps — transformers' own test (``Trainer.training_step``), so the term is scaled
        exactly as the host's loss is, whichever TRL and transformers run."""
        trainer = self.trainer
        scaled = getattr(trainer, "loss_is_scaled_for_ga", None)
        if scaled is None:
            accepts = getattr(trainer, "model_accepts_loss_kwargs", False)
            scaled = (accepts and num_items_in_batch is not None) or trainer.compute_loss_func is not None
        return bool(scaled)
