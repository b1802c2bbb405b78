"""Attach a latent regularizer (GANPO, MMD or a plugin's) to a live TRL trainer.

    from ganpo_trl import attach_regularizer

    trainer = DPOTrainer(model, args=DPOConfig(...), train_dataset=..., processing_class=tokenizer)
    handle = attach_regularizer(trainer, {"regularizer": "ganpo", "weight": 1.0})
    trainer.train()

Neither TRL nor the trainer's class is changed: a few methods are wrapped on the trainer
*instance* (``handle.detach()`` removes them):

- the loss — ``DPOTrainer._compute_loss`` / ``CPOTrainer.get_batch_loss_metrics`` — adds
  ``weight · L_reg`` computed from the hidden states of the trainer's own forwards, and, when
  ``preference_loss`` names a loss TRL does not compute, replaces the base loss by it,
  evaluated on log-probabilities the package computes itself from those same hidden states
  and the model's output-embedding weight (:mod:`ganpo_plugins.logprobs`, chunked: no
  ``[2B, T, V]`` logits);
- ``log`` adds the ``ganpo/*`` training metrics to the trainer's own log (so they reach
  ``trainer_state.json`` and every ``report_to`` integration); ``evaluation_loop`` adds
  ``<prefix>_ganpo/*`` evaluation metrics to what ``evaluate()`` returns and logs;
- ``save_model`` writes ``ganpo_regularizer.pt`` into every checkpoint folder and the final
  output folder; ``_load_optimizer_and_scheduler`` notes the checkpoint a run resumes from,
  whose regularizer state is restored as soon as the regularizer exists;
- a callback builds the regularizer at ``on_train_begin``, when the number of optimiser steps
  and the warm-up are known.

Nothing else of TRL is touched: no module function is replaced, and no private attribute is
read (settings come from ``trainer.args``). The full list of wrapped objects is
:attr:`GANPOAttachment.WRAPPED`; ``detach()`` restores each one.

Hidden states (the decoder body's output, i.e. the final-norm output that ``lm_head`` reads —
also on TRL's fused-LM-head path) come from the trainer's own forwards through
:class:`ganpo_plugins.HiddenStateTap`: the policy with gradient, the
reference from the trainer's reference model, or, with PEFT and no reference model, from the
trainer's adapter-disabled forward of the same model (the same hook fires twice).

Where the trainer runs no reference forward — SimPO/CPO, and DPO with
``precompute_ref_log_probs`` — the adapter runs one itself: a no-grad forward of the
reference model through its root module (so FSDP's unshard runs) with ``logits_to_keep=1`` (no
``[2B, T, V]`` logits), the hidden states read from its decoder body, in eval mode so it draws
nothing from the host's RNG. Cost: one inference forward of the model's
body per micro-batch, about a third of a training step's policy forward+backward. The
reference is ``ref_model=`` if given, else the trainer's ``ref_model``, else the PEFT policy
with its adapters disabled, else a frozen copy of the policy taken at attach time (one more
model in memory; pass ``ref_model=`` to avoid it, and always under DeepSpeed ZeRO-3).

Discriminators step at gradient-accumulation boundaries (``accelerator.sync_gradients``,
which ``Trainer`` sets before each micro-step) and never in evaluation, where the term is
computed under ``no_grad`` for the metrics only.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor

from ganpo_plugins import (
    LatentBatch,
    PairLogps,
    RegularizerConfig,
    StepInfo,
    parse_config,
)
from ganpo_plugins.logprobs import LogitHead, completion_logps
from ganpo_plugins.report import announce
from ganpo_plugins.runner import split_policy_reference
from ganpo_plugins.taps import find_decoder

from .online import OnlineDPOAttachment, is_online_dpo_trainer
from .settings import BaseLoss, TRLSettings
from .trainer_attachment import TrainerAttachment

__all__ = ["GANPOAttachment", "attach_regularizer"]

logger = logging.getLogger(__name__)


def attach_regularizer(
    trainer: Any, config: RegularizerConfig | dict[str, Any] | None = None, *, ref_model: Any = None
) -> GANPOAttachment | OnlineDPOAttachment:
    """Attach the regularizer described by ``config`` to ``trainer`` and return its handle.

    ``trainer``: a ``trl.DPOTrainer`` or ``trl.experimental.cpo.CPOTrainer`` (SimPO), or a
    subclass (Axolotl's), or ``trl.experimental.online_dpo.OnlineDPOTrainer`` (:mod:`ganpo_trl.online`).
    ``config``: a validated config (:func:`ganpo_plugins.parse_config`) or its dict form
    (``None``: the defaults, GANPO as in the paper). ``ref_model``: the frozen reference for
    trainers that run none themselves (see the module docstring).

    Raises ``TypeError`` for other trainers, :class:`~ganpo_plugins.hosts.HostVersionError`
    outside the supported TRL range, and ``ValueError`` (naming the settings) for combinations
    the adapter cannot run faithfully or a trainer that already has a regularizer attached.
    """
    if is_online_dpo_trainer(trainer):
        return OnlineDPOAttachment(trainer, parse_config(config), ref_model=ref_model)
    return GANPOAttachment(trainer, parse_config(config), ref_model=ref_model)


class GANPOAttachment(TrainerAttachment):
    """A regularizer attached to one TRL trainer.

    ``runner`` is ``None`` until training begins (evaluation before that runs without the
    term). ``reference`` is the model the adapter's own reference forward uses (``None`` when
    the trainer runs the reference forward, or for the PEFT adapter-disabled pass).
    """

    #: Every host object the attachment changes, and how ``detach()`` undoes it.
    WRAPPED: ClassVar[dict[str, str]] = {
        "trainer._compute_loss (DPO) / trainer.get_batch_loss_metrics (CPO)": "instance attribute removed",
        "trainer.evaluation_loop": "instance attribute removed",
        "trainer.loss_types, trainer.loss_weights (only for a TRL-computed GPO kind)": "previous values restored",
        **TrainerAttachment.SHARED_WRAPPED,
    }

    def __init__(self, trainer: Any, config: RegularizerConfig, ref_model: Any = None) -> None:
        self.kind = _trainer_kind(trainer)
        super().__init__(trainer, config)
        self.settings = TRLSettings.from_trainer(trainer, config)
        self.base: BaseLoss = self.settings.base_loss()
        # Where the reference hidden states come from.
        self.own_reference = self.kind == "cpo" or bool(getattr(trainer.args, "precompute_ref_log_probs", False))
        if ref_model is not None and not self.own_reference:
            raise ValueError(
                f"ref_model= is for trainers that run no reference forward; this {type(trainer).__name__} runs its "
                "own (its ref_model, or the adapter-disabled policy), whose hidden states the regularizer uses: "
                "pass the reference to the trainer instead"
            )
        self.reference = self._pick_reference(ref_model) if self.own_reference else None
        self._saved_loss_types: tuple[Any, Any] | None = None
        if self.base.trl_loss_type is not None and self.kind == "dpo":
            self._saved_loss_types = (trainer.loss_types, trainer.loss_weights)
            trainer.loss_types, trainer.loss_weights = [self.base.trl_loss_type], [1.0]
        loss_method = "_compute_loss" if self.kind == "dpo" else "get_batch_loss_metrics"
        self._install(
            {
                loss_method: self._wrap_dpo_loss if self.kind == "dpo" else self._wrap_cpo_loss,
                "evaluation_loop": self._wrap_evaluation_loop,
            }
        )
        announce(
            f"ganpo: {config.regularizer} regularizer ON (weight λ={config.weight}) in {type(trainer).__name__} "
            f"(trl {self.trl_version}); base loss: {self._describe_base_loss()}; hidden states: the decoder's "
            f"final-norm output of the trainer's own forwards; reference: {self._describe_reference()}; the logged "
            "`loss` includes λ·L_reg (ganpo/* metrics: docs/metrics.md)",
            is_main_process=trainer.accelerator.is_main_process,
        )

    # -- set-up -----------------------------------------------------------------------------

    def _pick_reference(self, ref_model: Any) -> Any:
        trainer = self.trainer
        if ref_model is not None:
            return ref_model
        if getattr(trainer, "ref_model", None) is not None:
            return trainer.ref_model
        policy = trainer.accelerator.unwrap_model(trainer.model)
        if _is_peft(policy):
            return None  # the policy with its adapters disabled
        if trainer.state.global_step > 0 or _is_zero3(trainer):
            raise ValueError(
                "this trainer runs no reference forward and holds no reference model; the regularizer needs "
                "reference hidden states: pass ref_model= (the frozen initial policy) to attach_regularizer"
            )
        logger.warning(
            "ganpo: %s runs no reference forward; using a frozen copy of the policy taken now as the reference "
            "(one more model in memory: pass ref_model= to choose it yourself)",
            type(trainer).__name__,
        )
        reference = copy.deepcopy(policy).eval()
        # A host's instance-level forward patch (TRL >= 1.16's fused LM head) closes over the
        # policy's own bound forward: the copy must run its class's forward, on its own weights.
        vars(reference).pop("forward", None)
        reference.requires_grad_(False)
        return reference

    def _build(self, args: Any, state: Any) -> None:
        if self.runner is not None:
            return
        trainer = self.trainer
        policy = trainer.model
        if self.own_reference:
            models: tuple[Any, ...] = (policy,)
            ref = self.reference
            _require_weights(ref)
        else:
            ref = trainer.ref_model
            models = (policy,) if ref is None else (policy, ref)
        self._start(args, state, *models, ref=ref)

    # -- the loss -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _capture(self) -> Iterator[None]:
        assert self.runner is not None
        tap = self.runner.tap
        tap.take()
        tap.enabled = True
        try:
            yield
        finally:
            tap.enabled = False

    def _training(self) -> bool:
        return bool(self.trainer.model.training and torch.is_grad_enabled())

    def _wrap_dpo_loss(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def _compute_loss(model: Any, inputs: dict[str, Any], return_outputs: bool = False) -> Any:
            if self.runner is None:
                return original(model, inputs, return_outputs)
            training = self._training()
            with self._capture():
                result = original(model, inputs, return_outputs)
            loss, outputs = result if return_outputs else (result, None)
            input_ids, attention, completion = inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
            policy_h, ref_h = self._latents(input_ids, attention)
            if self.base.loss is not None:
                loss = self._preference_loss(policy_h, ref_h, inputs)
            loss = loss + self._term(policy_h, ref_h, attention, completion, training)
            return (loss, outputs) if return_outputs else loss

        return _compute_loss

    def _wrap_cpo_loss(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def get_batch_loss_metrics(model: Any, batch: dict[str, Any], train_eval: str = "train") -> Any:
            if self.runner is None:
                return original(model, batch, train_eval)
            training = self._training()
            with self._capture():
                loss, metrics = original(model, batch, train_eval)
            trainer = self.trainer
            concat = trainer.concatenated_inputs(
                batch, is_encoder_decoder=False, padding_value=trainer.pad_token_id, device=trainer.accelerator.device
            )
            input_ids, attention = concat["concatenated_input_ids"], concat["concatenated_attention_mask"]
            response = concat["concatenated_labels"] != -100  # CPO labels: -100 on prompt and padding
            policy_h, ref_h = self._latents(input_ids, attention)
            return loss + self._term(policy_h, ref_h, attention, response, training), metrics

        return get_batch_loss_metrics

    def _latents(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Policy and reference final hidden states of this micro-batch, ``[2B, T, H]`` each."""
        assert self.runner is not None
        records = self.runner.tap.take()
        if self.own_reference:
            if len(records) != 1:
                raise RuntimeError(
                    f"expected one policy forward per step, captured {len(records)}; the host ran forwards the "
                    "adapter does not know about (separate chosen/rejected forwards are not supported)"
                )
            policy_h = records[0].hidden
            ref_h = self._reference_hidden(input_ids, attention_mask)
        else:
            policy_h, ref_h = split_policy_reference(records)
        if policy_h.shape[:2] != input_ids.shape or ref_h.shape[:2] != input_ids.shape:
            raise RuntimeError(
                f"hidden states {tuple(policy_h.shape[:2])} (policy) / {tuple(ref_h.shape[:2])} (reference) do not "
                f"cover the batch {tuple(input_ids.shape)}: the host packed the sequences or added virtual tokens "
                "(prompt-learning PEFT); the regularizer needs one hidden state per input token"
            )
        return policy_h, ref_h.to(policy_h.device)

    def _preference_loss(self, policy_h: Tensor, ref_h: Tensor, inputs: dict[str, Any]) -> Tensor:
        """The configured base loss on log-probabilities computed from the captured hidden states
        (policy with gradient; the reference's without, or TRL's precomputed ones)."""
        input_ids, completion = inputs["input_ids"], inputs["completion_mask"]
        trainer = self.trainer
        # The head runs at the precision the host's forwards run at (the accelerator's autocast).
        with trainer.accelerator.autocast():
            policy_logps = completion_logps(policy_h, LogitHead.of(trainer.model), input_ids, completion)
            if self.own_reference:
                ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
            else:
                ref_model = trainer.ref_model if trainer.ref_model is not None else trainer.model
                with torch.no_grad():
                    ref_logps = completion_logps(ref_h, LogitHead.of(ref_model), input_ids, completion)
                ref_chosen, ref_rejected = ref_logps.chunk(2)
        policy_chosen, policy_rejected = policy_logps.chunk(2)
        chosen_len, rejected_len = completion[:, 1:].sum(1).chunk(2)
        pair = PairLogps(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_len, rejected_len)
        assert self.base.loss is not None
        return self.base.loss(pair, trainer.beta, self.config.simpo_gamma).mean()

    def _term(
        self, policy_h: Tensor, ref_h: Tensor, attention_mask: Tensor, response_mask: Tensor, training: bool
    ) -> Tensor:
        assert self.runner is not None
        batch = LatentBatch.from_concatenated(policy_h, ref_h, attention_mask, response_mask)
        if not training:
            with torch.no_grad():
                return self.runner.step(batch, None)
        trainer = self.trainer
        accumulation = getattr(trainer, "current_gradient_accumulation_steps", trainer.args.gradient_accumulation_steps)
        info = StepInfo(is_boundary=bool(trainer.accelerator.sync_gradients), accumulation_steps=int(accumulation))
        return self.runner.step(batch, info)

    @torch.no_grad()
    def _reference_hidden(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Final hidden states of the reference, read from its decoder body during a forward of
        the whole model with ``logits_to_keep=1`` (one position's logits, not ``[2B, T, V]``).

        The forward goes through the root module, never around it: under FSDP the root's
        pre-forward is what gathers the parameters it owns (a root-sharded reference, TRL's
        ``prepare_fsdp``), and calling the decoder alone fails on sharded embeddings."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False, "logits_to_keep": 1}
        # The host's forwards run under the accelerator's autocast (it wraps the prepared models'
        # forward); the reference must run at the same precision.
        autocast = self.trainer.accelerator.autocast()
        if self.reference is not None:
            with autocast, _eval_mode(self.reference):
                return _decoder_output(self.reference, kwargs)
        from trl.models.utils import disable_gradient_checkpointing
        from trl.trainer.utils import use_adapter

        root = self.trainer.model  # under FSDP the sharded root; the adapter switches on the PEFT model inside
        model = self.trainer.accelerator.unwrap_model(root)
        adapter = "ref" if "ref" in model.peft_config else None  # TRL's convention for a re-trained adapter
        with (
            autocast,
            use_adapter(model, adapter),
            disable_gradient_checkpointing(model, self.trainer.args.gradient_checkpointing_kwargs),
            _eval_mode(root),
        ):
            return _decoder_output(root, kwargs)

    # -- logging, checkpoints -------------------------------------------------------------------

    def _wrap_evaluation_loop(self, original: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(original)

        def evaluation_loop(*args: Any, **kwargs: Any) -> Any:
            output = original(*args, **kwargs)
            if self.runner is not None:
                bound = signature.bind(*args, **kwargs)
                prefix = bound.arguments.get("metric_key_prefix", signature.parameters["metric_key_prefix"].default)
                output.metrics.update({f"{prefix}_{k}": v for k, v in self.runner.pop_metrics("eval").items()})
            return output

        return evaluation_loop

    def detach(self) -> None:
        """Undo everything in :attr:`WRAPPED`: the trainer is as it was before the attach."""
        if self._saved_loss_types is not None:
            self.trainer.loss_types, self.trainer.loss_weights = self._saved_loss_types
            self._saved_loss_types = None
        super().detach()

    def _describe_base_loss(self) -> str:
        if self.base.loss is not None:
            return f"{self.base.loss.name} (computed by ganpo_plugins from the captured hidden states)"
        if self.base.trl_loss_type is not None:
            return f"{self.config.preference_loss} = TRL loss_type={self.base.trl_loss_type!r} (computed by TRL)"
        return "the trainer's own (computed by TRL)"

    def _describe_reference(self) -> str:
        if not self.own_reference:
            if self.trainer.ref_model is None:
                return "the trainer's adapter-disabled forward"
            return "the trainer's reference forward"
        if self.reference is None:
            return "an extra no-grad forward of the adapter-disabled policy"
        return "an extra no-grad forward of the reference model"


def _trainer_kind(trainer: Any) -> str:
    from trl import DPOTrainer
    from trl.experimental.cpo import CPOTrainer

    if isinstance(trainer, DPOTrainer):
        return "dpo"
    if isinstance(trainer, CPOTrainer):
        return "cpo"
    raise TypeError(
        f"attach_regularizer supports trl.DPOTrainer and trl.experimental.cpo.CPOTrainer (SimPO) and their "
        f"subclasses, got {type(trainer).__name__}"
    )


def _is_peft(model: Any) -> bool:
    from accelerate.utils import is_peft_model

    return bool(is_peft_model(model))


def _is_zero3(trainer: Any) -> bool:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def _decoder(model: Any) -> Any:
    """The decoder body of a causal LM: its output's ``last_hidden_state`` is ``lm_head``'s input."""
    decoder = find_decoder(model)
    if decoder is None:
        raise TypeError(
            f"{type(model).__name__} exposes no decoder body (get_decoder()); the adapter's reference forward "
            "needs a transformers causal LM"
        )
    return decoder


def _decoder_output(model: Any, kwargs: dict[str, Any]) -> Tensor:
    """Run ``model(**kwargs)`` and return what its decoder body output (``last_hidden_state``)."""
    captured: list[Tensor] = []

    def hook(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        hidden = getattr(output, "last_hidden_state", None)
        captured.append(hidden if isinstance(hidden, Tensor) else output[0])

    handle = _decoder(model).register_forward_hook(hook)
    try:
        model(**kwargs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(
            f"the reference forward ran its decoder body {len(captured)} times, expected once (is its forward "
            "patched to call another model's?)"
        )
    return captured[0]


def _require_weights(reference: Any) -> None:
    """Refuse a reference whose weights are on the meta device (no forward can run on it)."""
    if reference is not None and any(p.is_meta for p in reference.parameters()):
        raise ValueError(
            "the reference model the adapter runs has no weights on this rank (meta device): FSDP's "
            "cpu_ram_efficient_loading loads every rank but the first without weights, and a frozen copy of such a "
            "policy has none either; load the reference (or the policy, when the adapter copies it) with "
            "cpu_ram_efficient_loading off, or pass ref_model= a model with its weights"
        )


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
