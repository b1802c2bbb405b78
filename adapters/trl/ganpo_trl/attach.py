"""Attach a latent regularizer (GANPO, MMD or a plugin's) to a live TRL ``DPOTrainer`` or ``CPOTrainer``.

    trainer = DPOTrainer(model, args=DPOConfig(...), train_dataset=..., processing_class=tokenizer)
    handle = attach_regularizer(trainer, {"regularizer": "ganpo", "weight": 1.0})
    trainer.train()

Neither TRL nor the trainer's class is changed: the methods in :attr:`GANPOAttachment.WRAPPED` are
wrapped on the trainer *instance* and ``handle.detach()`` removes them. What each does, which
reference the adapter's own reference forward runs, and what it costs: docs/adapters.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from ganpo_plugins.adapter_kit import (
    LatentBatch,
    LogitHead,
    PairLogps,
    RegularizerConfig,
    TrainerAttachment,
    announce_on,
    as_config,
    check_host,
    completion_logps,
    require_host,
    require_weights,
)

from .facts import facts_from_trainer
from .grpo import OnlineRLAttachment
from .kinds import trainer_kind
from .online import OnlineDPOAttachment
from .reference import reference_hidden

__all__ = ["GANPOAttachment", "attach_regularizer"]


def attach_regularizer(
    trainer: Any, config: RegularizerConfig | dict[str, Any] | None = None, *, ref_model: Any = None
) -> GANPOAttachment | OnlineDPOAttachment | OnlineRLAttachment:
    """Attach the regularizer ``config`` describes (``None``: GANPO as in the paper) to a TRL
    ``DPOTrainer``, ``CPOTrainer`` (SimPO), ``OnlineDPOTrainer``, ``GRPOTrainer``, ``RLOOTrainer`` or a
    subclass; return its handle. ``ref_model``: the frozen reference for trainers that run none
    themselves (GRPO/RLOO with ``beta=0``). A mapping is parsed here; a parsed config
    (``ganpo_plugins.parse_config``) is used as it is.

    Raises ``TypeError`` for other trainers, :class:`~ganpo_plugins.adapter_kit.versions.HostVersionError`
    outside the supported TRL range, and ``ValueError`` (naming the settings) for combinations
    the adapter cannot run faithfully or a trainer that already has a regularizer attached."""
    kind = trainer_kind(trainer)
    if kind == "online_dpo":
        if ref_model is not None:
            raise _ref_model_refused(trainer)
        return OnlineDPOAttachment(trainer, as_config(config))
    if kind in ("grpo", "rloo"):
        return OnlineRLAttachment(trainer, as_config(config), ref_model=ref_model)
    return GANPOAttachment(trainer, as_config(config), ref_model=ref_model)


def _ref_model_refused(trainer: Any) -> ValueError:
    return ValueError(
        f"ref_model= is for trainers that run no reference forward; this {type(trainer).__name__} runs its "
        "own (its ref_model, or the adapter-disabled policy), whose hidden states the regularizer uses: "
        "pass the reference to the trainer instead"
    )


class GANPOAttachment(TrainerAttachment):
    """A regularizer attached to one TRL DPO or CPO trainer. ``reference`` is the model the
    adapter's own reference forward runs (``None``: the trainer's, or the adapter-disabled policy)."""

    WRAPPED: ClassVar[dict[str, str]] = {
        "trainer._compute_loss (DPO) / trainer.get_batch_loss_metrics (CPO)": "instance attribute removed",
        "trainer.loss_types, trainer.loss_weights (only for a TRL-computed GPO kind)": "previous values restored",
        **TrainerAttachment.SHARED_WRAPPED,
    }

    def __init__(self, trainer: Any, config: RegularizerConfig, ref_model: Any = None) -> None:
        self.kind = trainer_kind(trainer)
        if self.kind not in ("dpo", "cpo"):
            raise TypeError(
                f"attach_regularizer supports trl.DPOTrainer, trl.experimental.cpo.CPOTrainer (SimPO), "
                f"OnlineDPOTrainer, GRPOTrainer, RLOOTrainer and their subclasses, got {type(trainer).__name__}"
            )
        self.host = f"trl {require_host('trl')}"
        super().__init__(trainer, config)
        self.base = check_host(facts_from_trainer(trainer, self.kind), config)
        # CPO runs no reference, DPO none with precomputed reference log-probs: the adapter runs one.
        own_reference = self.own_reference = self.kind == "cpo" or bool(trainer.args.precompute_ref_log_probs)
        if ref_model is not None and not own_reference:
            raise _ref_model_refused(trainer)
        self.reference = self.choose_reference(ref_model) if own_reference else None
        self.install(
            {"_compute_loss": self._dpo_loss} if self.kind == "dpo" else {"get_batch_loss_metrics": self._cpo_loss}
        )
        if self.base.host_loss_type is not None and self.kind == "dpo":
            self.set_attribute(trainer, "loss_types", [self.base.host_loss_type])
            self.set_attribute(trainer, "loss_weights", [1.0])
        if not own_reference:
            ref = "the trainer's " + ("reference forward" if trainer.ref_model is not None else "adapter-disabled pass")
        else:
            ref = f"an extra no-grad forward of the {'PEFT base' if self.reference is None else 'reference'} model"
        self.on_line = announce_on(
            config, f"{type(trainer).__name__} ({self.host})", base=self.base.describe("TRL"), reference=ref,
            hidden="the decoder's final-norm output of the trainer's own forwards",
            main=trainer.accelerator.is_main_process,
        )  # fmt: skip

    def build_runner(self, args: Any, state: Any) -> None:
        policy, ref = self.trainer.model, self.reference if self.own_reference else self.trainer.ref_model
        if self.own_reference and ref is not None:
            require_weights(ref)
        tapped = (policy,) if self.own_reference or ref is None else (policy, ref)
        self.start_runner(args, state, *tapped, ref=ref)

    # -- the loss -----------------------------------------------------------------------------

    def _dpo_loss(self, original: Callable[..., Any], model: Any, inputs: dict[str, Any], return_outputs=False) -> Any:
        if self.runner is None:
            return original(model, inputs, return_outputs)
        result = self.captured(original, model, inputs, return_outputs)
        loss, outputs = result if return_outputs else (result, None)
        loss = self._regularized(loss, inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"], inputs)
        return (loss, outputs) if return_outputs else loss

    def _cpo_loss(self, original: Callable[..., Any], model: Any, batch: dict[str, Any], train_eval="train") -> Any:
        if self.runner is None:
            return original(model, batch, train_eval)
        loss, metrics = self.captured(original, model, batch, train_eval)
        trainer = self.trainer
        concat = trainer.concatenated_inputs(
            batch, is_encoder_decoder=False, padding_value=trainer.pad_token_id, device=trainer.accelerator.device
        )
        input_ids, attention = concat["concatenated_input_ids"], concat["concatenated_attention_mask"]
        response = concat["concatenated_labels"] != -100  # CPO labels: -100 on prompt and padding
        return self._regularized(loss, input_ids, attention, response), metrics

    def _regularized(self, loss: Tensor, input_ids: Tensor, attention: Tensor, response: Tensor, inputs=None) -> Tensor:
        """``L_PO + λ · L_reg``; ``L_PO`` replaced by the configured base loss where the package
        computes it (DPO ``inputs`` given)."""
        assert self.runner is not None
        reference = (lambda: self._reference_hidden(input_ids, attention)) if self.own_reference else None
        policy_h, ref_h = self.runner.latents(tuple(input_ids.shape), reference)
        if inputs is not None and self.base.loss is not None:
            loss = self._preference_loss(policy_h, ref_h, inputs)
        batch = LatentBatch.from_concatenated(policy_h, ref_h, attention, response)
        return loss + self.runner.step(batch, self.step_info())

    def _preference_loss(self, policy_h: Tensor, ref_h: Tensor, inputs: dict[str, Any]) -> Tensor:
        """The configured base loss on log-probabilities computed from the captured hidden states
        (the reference's without gradient, or TRL's precomputed ones)."""
        input_ids, completion = inputs["input_ids"], inputs["completion_mask"]
        trainer = self.trainer
        with trainer.accelerator.autocast():  # the head at the precision of the host's forwards
            policy_logps = completion_logps(policy_h, LogitHead.of(trainer.model), input_ids, completion)
            if self.own_reference:
                ref_logps = torch.cat((inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]))
            else:
                ref_model = trainer.ref_model if trainer.ref_model is not None else trainer.model
                with torch.no_grad():
                    ref_logps = completion_logps(ref_h, LogitHead.of(ref_model), input_ids, completion)
        pair = PairLogps.from_concatenated(policy_logps, ref_logps, completion[:, 1:].sum(1))
        return self.base.loss(pair, trainer.beta, self.config.simpo_gamma).mean()

    def _reference_hidden(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return reference_hidden(self.trainer, self.reference, input_ids, attention_mask)
