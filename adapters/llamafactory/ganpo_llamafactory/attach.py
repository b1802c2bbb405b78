"""Attach a latent regularizer (GANPO, or any registered one) to LLaMA-Factory's ``CustomDPOTrainer``
(``stage: dpo``), the trainer ``llamafactory-cli train`` builds; ``ganpo-llamafactory-cli`` does it
for every run with a ``ganpo:`` block, a Python user with :func:`ganpo_plugins.attach`.

Neither LLaMA-Factory nor the trainer's class is changed: the methods in
:attr:`LlamaFactoryDPOAttachment.WRAPPED` are wrapped on the trainer *instance* (and on its
``LogCallback`` instance) and ``detach()`` removes them. The hidden states come from the decoder
hook on LLaMA-Factory's own forwards: the policy's, and its reference's (the ``ref_model`` it
loads, or the adapter-disabled pass of a LoRA policy). For ``pref_loss: simpo`` / ``orpo``, which
run no reference, the adapter runs its own no-grad reference forward (``ref_model:`` when set,
else the adapter-disabled LoRA policy, else a frozen copy of the initial policy).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor

from ganpo_plugins.adapter_kit import (
    LatentBatch,
    PairLogps,
    RegularizerConfig,
    TrainerAttachment,
    announce_on,
    reference_forward,
    require_host,
    require_weights,
)

from .entry_point import is_dpo_trainer
from .facts import check_dpo_run
from .trainer_log import log_callback, on_log_with

__all__ = ["IGNORE_INDEX", "LlamaFactoryDPOAttachment"]

#: LLaMA-Factory's label of prompt and padding positions (``llamafactory.extras.constants``).
IGNORE_INDEX = -100


class LlamaFactoryDPOAttachment(TrainerAttachment):
    """A regularizer attached to one LLaMA-Factory ``CustomDPOTrainer`` (see the module docstring).
    ``ref_model``: the reference of a reference-free run (``pref_loss: simpo`` / ``orpo``)."""

    WRAPPED: ClassVar[dict[str, str]] = {
        "trainer.get_batch_loss_metrics": "instance attribute removed",
        "trainer.compute_preference_loss (only for a GPO kind the package computes)": "instance attribute removed",
        "the trainer's LogCallback.on_log (ganpo/* into trainer_log.jsonl)": "instance attribute removed",
        **TrainerAttachment.SHARED_WRAPPED,
    }

    def __init__(self, trainer: Any, config: RegularizerConfig, ref_model: Any = None) -> None:
        if not is_dpo_trainer(trainer):
            raise TypeError(f"LlamaFactoryDPOAttachment attaches to CustomDPOTrainer, got {type(trainer).__name__}")
        self.host = f"llamafactory {require_host('llamafactory')}"
        super().__init__(trainer, config)
        self.base = check_dpo_run(config, trainer.finetuning_args)
        self.own_reference = not trainer.finetuning_args.use_ref_model  # simpo, orpo: LLaMA-Factory runs none
        if ref_model is not None and not self.own_reference:
            raise ValueError(
                "ref_model= is for the reference-free losses (pref_loss: simpo / orpo); this run's reference is "
                "LLaMA-Factory's own (ref_model: in the config, or the adapter-disabled LoRA policy)"
            )
        self.reference = self.choose_reference(ref_model) if self.own_reference else None
        if self.reference is not None:
            self.reference.to(trainer.accelerator.device)
        self._lengths: Tensor | None = None  # response token counts of the current batch
        wrappers = {"get_batch_loss_metrics": self._loss}
        if self.base.loss is not None:
            wrappers["compute_preference_loss"] = self._package_preference_loss
        self.install(wrappers)  # an equivalent kind (logistic: sigmoid) is pref_loss itself: nothing to set
        callback = log_callback(trainer)
        if callback is not None:
            self.wrap(callback, {"on_log": functools.partial(on_log_with, ("ganpo/", "eval_ganpo/"), callback)})
        if not self.own_reference:
            own = "reference forward" if trainer.ref_model is not None else "adapter-disabled pass"
            ref = f"LLaMA-Factory's {own}"
        else:
            ref = f"an extra no-grad forward of the {'PEFT base' if self.reference is None else 'reference'} model"
        announce_on(
            config, f"{type(trainer).__name__} ({self.host}, pref_loss: {trainer.finetuning_args.pref_loss})",
            base=self.base.describe("LLaMA-Factory"), reference=ref,
            hidden="the decoder's final-norm output of LLaMA-Factory's own forwards",
            main=trainer.accelerator.is_main_process,
        )  # fmt: skip

    def build_runner(self, args: Any, state: Any) -> None:
        policy = self.trainer.model
        ref = self.reference if self.own_reference else self.trainer.ref_model
        if self.own_reference and ref is not None:
            require_weights(ref)
        tapped = (policy,) if self.own_reference or ref is None else (policy, ref)
        self.start_runner(args, state, *tapped, ref=ref)

    def _loss(self, original: Callable[..., Any], model: Any, batch: dict[str, Any], train_eval="train") -> Any:
        """``L_PO + λ · L_reg`` from LLaMA-Factory's ``(loss, metrics)`` and the captured hidden states."""
        if self.runner is None:
            return original(model, batch, train_eval)
        # Read before the call: for simpo/orpo LLaMA-Factory pops the labels off this very dict.
        input_ids, attention = batch["input_ids"], batch["attention_mask"]
        response = batch["labels"] != IGNORE_INDEX  # prompt and padding carry IGNORE_INDEX
        self._lengths = response[:, 1:].sum(-1)  # as LLaMA-Factory's get_batch_logps counts them
        loss, metrics = self.captured(original, model, batch, train_eval)
        reference = (lambda: self._reference_hidden(input_ids, attention)) if self.own_reference else None
        policy_h, ref_h = self.runner.latents(tuple(input_ids.shape), reference)
        latents = LatentBatch.from_concatenated(policy_h, ref_h, attention, response)
        return loss + self.runner.step(latents, self.step_info()), metrics

    def _package_preference_loss(
        self, original: Callable[..., Any], policy_chosen, policy_rejected, ref_chosen, ref_rejected
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The configured GPO kind on LLaMA-Factory's own summed log-probabilities (``pref_loss:
        sigmoid`` sums them), per pair, with DPO's implicit rewards for its metrics."""
        assert self.base.loss is not None and self._lengths is not None
        pair = PairLogps(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *self._lengths.chunk(2))
        return self.base.loss.loss_and_rewards(pair, self.trainer.beta, self.config.simpo_gamma)

    def _reference_hidden(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        autocast = self.trainer.accelerator.autocast()  # the precision of the host's own forwards
        if self.reference is not None:
            with autocast:
                return reference_forward(self.reference, input_ids, attention_mask)
        root = self.trainer.model  # a PEFT policy: LLaMA-Factory's own reference is this pass
        with autocast, self.trainer.accelerator.unwrap_model(root).disable_adapter():
            return reference_forward(root, input_ids, attention_mask)
