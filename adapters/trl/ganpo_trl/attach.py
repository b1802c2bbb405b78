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
  evaluated on the log-probabilities TRL computed;
- ``log`` adds the ``ganpo/*`` training metrics to the trainer's own log (so they reach
  ``trainer_state.json`` and every ``report_to`` integration); ``evaluation_loop`` adds
  ``<prefix>_ganpo/*`` evaluation metrics to what ``evaluate()`` returns and logs;
- ``save_model`` writes ``ganpo_regularizer.pt`` into every checkpoint folder and the final
  output folder; ``_load_optimizer_and_scheduler`` notes the checkpoint a run resumes from,
  whose regularizer state is restored as soon as the regularizer exists;
- a callback builds the regularizer at ``on_train_begin``, when the number of optimiser steps
  and the warm-up are known.

Hidden states (the input of ``lm_head``, i.e. the final-norm output) come from the trainer's
own forwards through :class:`ganpo_plugins.HiddenStateTap`: the policy with gradient, the
reference from the trainer's reference model, or, with PEFT and no reference model, from the
trainer's adapter-disabled forward of the same model (the same hook fires twice).

Where the trainer runs no reference forward — SimPO/CPO, and DPO with
``precompute_ref_log_probs`` — the adapter runs one itself: a no-grad forward of the
reference's decoder (``get_decoder()``, without ``lm_head``, so no ``[2B, T, V]`` logits), in
eval mode so it draws nothing from the host's RNG. Cost: one inference forward of the model's
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
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor
from transformers import TrainerCallback

from ganpo_plugins import (
    GANPOConfig,
    LatentBatch,
    PairLogps,
    RegularizerContext,
    RegularizerRunner,
    StepInfo,
    parse_config,
)
from ganpo_plugins.runner import split_policy_reference
from ganpo_plugins.taps import find_output_embeddings

from .settings import BaseLoss, TRLSettings

__all__ = ["GANPOAttachment", "attach_regularizer"]

logger = logging.getLogger(__name__)

# Per-token log-probabilities TRL's DPO loss computes, recorded while an attachment asks.
_LOGPS: ContextVar[list[Tensor] | None] = ContextVar("ganpo_trl_logps", default=None)


def attach_regularizer(
    trainer: Any, config: GANPOConfig | dict[str, Any] | None = None, *, ref_model: Any = None
) -> GANPOAttachment:
    """Attach the regularizer described by ``config`` to ``trainer`` and return its handle.

    ``trainer``: a ``trl.DPOTrainer`` or ``trl.experimental.cpo.CPOTrainer`` (SimPO), or a
    subclass (Axolotl's). ``config``: a :class:`~ganpo_plugins.GANPOConfig` or its dict form
    (``None``: the defaults, GANPO as in the paper). ``ref_model``: the frozen reference for
    trainers that run none themselves (see the module docstring).

    Raises ``TypeError`` for other trainers and ``ValueError`` (naming the settings) for
    combinations the adapter cannot run faithfully.
    """
    return GANPOAttachment(trainer, parse_config(config), ref_model=ref_model)


class _BuildCallback(TrainerCallback):
    def __init__(self, attachment: GANPOAttachment) -> None:
        self.attachment = attachment

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.attachment._build(args, state)


class GANPOAttachment:
    """A regularizer attached to one TRL trainer.

    ``runner`` is ``None`` until training begins (evaluation before that runs without the
    term). ``reference`` is the model the adapter's own reference forward uses (``None`` when
    the trainer runs the reference forward, or for the PEFT adapter-disabled pass).
    """

    def __init__(self, trainer: Any, config: GANPOConfig, ref_model: Any = None) -> None:
        self.trainer = trainer
        self.config = config
        self.kind = _trainer_kind(trainer)
        self.settings = TRLSettings.from_trainer(trainer, config)
        self.base: BaseLoss = self.settings.base_loss()
        self.runner: RegularizerRunner | None = None
        self._resume_dir: str | None = None
        # Where the reference hidden states come from.
        self.own_reference = self.kind == "cpo" or bool(getattr(trainer, "precompute_ref_logps", False))
        if ref_model is not None and not self.own_reference:
            raise ValueError(
                f"ref_model= is for trainers that run no reference forward; this {type(trainer).__name__} runs its "
                "own (its ref_model, or the adapter-disabled policy), whose hidden states the regularizer uses: "
                "pass the reference to the trainer instead"
            )
        self.reference = self._pick_reference(ref_model) if self.own_reference else None
        if self.base.trl_loss_type is not None and self.kind == "dpo":
            trainer.loss_types, trainer.loss_weights = [self.base.trl_loss_type], [1.0]
        if self.base.loss is not None:
            _install_logp_recorder()
        self._originals: dict[str, Callable[..., Any]] = {}
        loss_method = "_compute_loss" if self.kind == "dpo" else "get_batch_loss_metrics"
        wrappers = {
            loss_method: self._wrap_dpo_loss if self.kind == "dpo" else self._wrap_cpo_loss,
            "log": self._wrap_log,
            "evaluation_loop": self._wrap_evaluation_loop,
            "save_model": self._wrap_save_model,
            "_load_optimizer_and_scheduler": self._wrap_load_optimizer,
        }
        for name, make in wrappers.items():
            self._originals[name] = getattr(trainer, name)
            setattr(trainer, name, make(self._originals[name]))
        self._callback = _BuildCallback(self)
        trainer.add_callback(self._callback)
        logger.info(
            "ganpo: %s (weight %s) attached to %s; base loss: %s; reference states: %s",
            config.regularizer,
            config.weight,
            type(trainer).__name__,
            self._describe_base_loss(),
            self._describe_reference(),
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
        else:
            ref = trainer.ref_model
            models = (policy,) if ref is None else (policy, ref)
        context = RegularizerContext(
            hidden_size=_hidden_size(policy),
            policy_lr=args.learning_rate,
            total_steps=state.max_steps,
            warmup_steps=args.get_warmup_steps(state.max_steps),
            accumulation_steps=args.gradient_accumulation_steps,
            ref_hidden_size=None if ref is None else _hidden_size(ref),
            device=trainer.accelerator.device,
            seed=args.seed,
        )
        self.runner = RegularizerRunner(self.config, context, *models)
        self.runner.tap.enabled = False  # record only inside the loss (never precompute or generation passes)
        if self._resume_dir is not None:
            self.runner.load(self._resume_dir)

    # -- the loss -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _capture(self, record_logps: bool) -> Iterator[list[Tensor]]:
        assert self.runner is not None
        tap = self.runner.tap
        tap.take()
        tap.enabled = True
        logps: list[Tensor] = []
        token = _LOGPS.set(logps) if record_logps else None
        try:
            yield logps
        finally:
            tap.enabled = False
            if token is not None:
                _LOGPS.reset(token)

    def _training(self) -> bool:
        return bool(self.trainer.model.training and torch.is_grad_enabled())

    def _wrap_dpo_loss(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def _compute_loss(model: Any, inputs: dict[str, Any], return_outputs: bool = False) -> Any:
            if self.runner is None:
                return original(model, inputs, return_outputs)
            training = self._training()
            with self._capture(self.base.loss is not None) as logps:
                result = original(model, inputs, return_outputs)
            loss, outputs = result if return_outputs else (result, None)
            if self.base.loss is not None:
                loss = self._preference_loss(logps, inputs)
            loss = loss + self._term(inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"], training)
            return (loss, outputs) if return_outputs else loss

        return _compute_loss

    def _wrap_cpo_loss(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def get_batch_loss_metrics(model: Any, batch: dict[str, Any], train_eval: str = "train") -> Any:
            if self.runner is None:
                return original(model, batch, train_eval)
            training = self._training()
            with self._capture(False):
                loss, metrics = original(model, batch, train_eval)
            trainer = self.trainer
            concat = trainer.concatenated_inputs(
                batch, is_encoder_decoder=False, padding_value=trainer.pad_token_id, device=trainer.accelerator.device
            )
            response = concat["concatenated_labels"] != -100  # CPO labels: -100 on prompt and padding
            term = self._term(
                concat["concatenated_input_ids"], concat["concatenated_attention_mask"], response, training
            )
            return loss + term, metrics

        return get_batch_loss_metrics

    def _preference_loss(self, logps: list[Tensor], inputs: dict[str, Any]) -> Tensor:
        """The configured base loss on TRL's own per-token log-probabilities (already masked to
        the completion in place by TRL): policy first, then the reference unless precomputed."""
        precomputed = bool(self.trainer.precompute_ref_logps)
        if len(logps) != (1 if precomputed else 2):
            raise RuntimeError(
                f"expected TRL's DPO loss to compute {1 if precomputed else 2} per-token log-probabilities, saw "
                f"{len(logps)}; this TRL version computes its loss differently from TRL 1.9 (unsupported)"
            )
        policy_chosen, policy_rejected = logps[0].sum(1).chunk(2)
        if precomputed:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = logps[1].sum(1).chunk(2)
        chosen_len, rejected_len = inputs["completion_mask"][:, 1:].sum(1).chunk(2)
        pair = PairLogps(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_len, rejected_len)
        assert self.base.loss is not None
        return self.base.loss(pair, self.trainer.beta, self.config.simpo_gamma).mean()

    def _term(self, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor, training: bool) -> Tensor:
        assert self.runner is not None
        records = self.runner.tap.take()
        if self.own_reference:
            if len(records) != 1:
                raise RuntimeError(
                    f"expected one policy forward per step, captured {len(records)}; the host ran forwards the "
                    "adapter does not know about (packing, padding-free or separate chosen/rejected forwards)"
                )
            policy_h = records[0].hidden
            ref_h = self._reference_hidden(input_ids, attention_mask)
        else:
            policy_h, ref_h = split_policy_reference(records)
        if policy_h.shape[:2] != input_ids.shape or ref_h.shape[:2] != input_ids.shape:
            raise RuntimeError(
                f"hidden states {tuple(policy_h.shape[:2])} (policy) / {tuple(ref_h.shape[:2])} (reference) do not "
                f"cover the batch {tuple(input_ids.shape)}: the host sliced them before lm_head (logits_to_keep) or "
                "packed the sequences; the regularizer needs every position"
            )
        batch = LatentBatch.from_concatenated(policy_h, ref_h.to(policy_h.device), attention_mask, response_mask)
        if not training:
            with torch.no_grad():
                return self.runner.step(batch, None)
        trainer = self.trainer
        accumulation = getattr(trainer, "current_gradient_accumulation_steps", trainer.args.gradient_accumulation_steps)
        info = StepInfo(is_boundary=bool(trainer.accelerator.sync_gradients), accumulation_steps=int(accumulation))
        return self.runner.step(batch, info)

    @torch.no_grad()
    def _reference_hidden(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Final hidden states of the reference, from its decoder alone (no ``lm_head``, no logits)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        # The host's forwards run under the accelerator's autocast (it wraps the prepared models'
        # forward); the decoder called directly must run under the same precision.
        autocast = self.trainer.accelerator.autocast()
        if self.reference is not None:
            with autocast, _eval_mode(self.reference):
                return _decoder(self.reference)(**kwargs).last_hidden_state
        from trl.models.utils import disable_gradient_checkpointing
        from trl.trainer.utils import use_adapter

        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        adapter = "ref" if "ref" in model.peft_config else None  # TRL's convention for a re-trained adapter
        with (
            autocast,
            use_adapter(model, adapter),
            disable_gradient_checkpointing(model, self.trainer.args.gradient_checkpointing_kwargs),
            _eval_mode(model),
        ):
            return _decoder(model)(**kwargs).last_hidden_state

    # -- logging, checkpoints -------------------------------------------------------------------

    def _wrap_log(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def log(logs: dict[str, float], *args: Any, **kwargs: Any) -> Any:
            if self.runner is not None and "loss" in logs:  # a training log (evaluation logs carry eval_loss)
                logs.update(self.runner.pop_metrics("train", self.trainer.state.global_step))
            return original(logs, *args, **kwargs)

        return log

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

    def _wrap_save_model(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def save_model(output_dir: str | None = None, *args: Any, **kwargs: Any) -> Any:
            # Written first: a checkpoint folder never holds a model without its regularizer state.
            if self.runner is not None:
                self.runner.save(output_dir or self.trainer.args.output_dir)
            return original(output_dir, *args, **kwargs)

        return save_model

    def _wrap_load_optimizer(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def _load_optimizer_and_scheduler(checkpoint: str | None) -> Any:
            result = original(checkpoint)
            if checkpoint is not None:
                self._resume_dir = os.fspath(checkpoint)
                if self.runner is not None:
                    self.runner.load(self._resume_dir)
            return result

        return _load_optimizer_and_scheduler

    # -- public --------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the regularizer state into ``directory`` (what every checkpoint gets)."""
        if self.runner is None:
            raise RuntimeError("the regularizer is built when training begins; nothing to save yet")
        self.runner.save(directory)

    def detach(self) -> None:
        """Restore the trainer's own methods and remove the hooks."""
        for name in self._originals:
            self.trainer.__dict__.pop(name, None)
        self._originals.clear()
        self.trainer.remove_callback(self._callback)
        if self.runner is not None:
            self.runner.close()

    def _describe_base_loss(self) -> str:
        if self.base.loss is not None:
            return f"{self.base.loss.name} (ganpo_plugins, on TRL's log-probabilities)"
        if self.base.trl_loss_type is not None:
            return f"TRL loss_type={self.base.trl_loss_type!r}"
        return "the trainer's own"

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


def _install_logp_recorder() -> None:
    """Wrap the ``selective_log_softmax`` TRL's DPO module calls so that, while an attachment
    asks (a context variable), the per-token log-probabilities it returns are recorded. TRL 1.9
    exposes them nowhere else inside ``_compute_loss``; outside a recording the wrapper only
    calls through, so every other caller sees TRL's own function."""
    import trl.trainer.dpo_trainer as dpo_module

    current = dpo_module.selective_log_softmax
    if getattr(current, "_ganpo_recorder", False):
        return

    def selective_log_softmax(logits: Tensor, index: Tensor) -> Tensor:
        out = current(logits, index)
        record = _LOGPS.get()
        if record is not None:
            record.append(out)
        return out

    selective_log_softmax._ganpo_recorder = True  # type: ignore[attr-defined]
    dpo_module.selective_log_softmax = selective_log_softmax


def _is_peft(model: Any) -> bool:
    from accelerate.utils import is_peft_model

    return bool(is_peft_model(model))


def _is_zero3(trainer: Any) -> bool:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def _hidden_size(model: Any) -> int:
    emb = find_output_embeddings(model)
    size = getattr(emb, "in_features", None)
    if size is None:
        raise TypeError(f"cannot read the hidden size of {type(model).__name__}: its output embeddings are not Linear")
    return int(size)


def _decoder(model: Any) -> Any:
    """The decoder body of a causal LM: its output's ``last_hidden_state`` is ``lm_head``'s input."""
    inner = model.module if isinstance(getattr(model, "module", None), torch.nn.Module) else model
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    if decoder is None or decoder is inner:
        raise TypeError(
            f"{type(inner).__name__} exposes no decoder body (get_decoder()); the adapter's reference forward "
            "needs a transformers causal LM"
        )
    return decoder


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
