"""Attach a latent regularizer (GANPO, or any registered one) to OpenRLHF's DPOTrainer.

:class:`GANPODPOTrainer` subclasses ``openrlhf.trainer.dpo_trainer.DPOTrainer`` only to call
:func:`ganpo_plugins.attach` on itself once built (the launcher puts it in the base class's
place); the OpenRLHF host adapter (:mod:`ganpo_openrlhf.host`, entry point ``openrlhf`` of the group
``ganpo_plugins.hosts``) claims the trainer and builds an :class:`OpenRLHFAttachment`, which
wraps these attributes of that trainer instance (``OpenRLHFAttachment.WRAPPED``; ``detach()``
restores them) — each a seam the host offers:

- hidden states: a forward hook on the decoder body of the policy and of the reference
  (:class:`ganpo_plugins.HiddenStateTap`) records the final-norm output of OpenRLHF's own
  forwards — no extra forward;
- ``concatenated_forward``: calls the host's, then records the attention mask, the response
  mask (positions at or after each row's prompt) and the response lengths of the batch;
- ``loss_fn`` (called after both forwards, in ``fit`` and in ``evaluate``): wrapped to add
  ``weight · L_reg`` to the host's loss (or to a ``--ganpo.preference_loss`` computed from the
  host's summed log-probabilities). In training the regularizer updates first; its optimiser
  steps when the DeepSpeed engine is at a gradient-accumulation boundary — the engine's own
  ``is_gradient_accumulation_boundary()``, which at loss time is true on the micro-step whose
  ``step()`` updates the policy — and its gradients are divided by the engine's
  ``gradient_accumulation_steps()``, as ``engine.backward`` divides the policy loss. In
  ``evaluate`` (no grad, eval mode) nothing learns: the term is computed for metrics only and
  the host's eval loss is left as it was;
- ``save_logs_and_checkpoints``: adds the ``ganpo/*`` metrics (means over the accumulation
  window, averaged over data-parallel ranks by the runner) to OpenRLHF's ``logs_dict`` before it
  reaches wandb and TensorBoard; ``evaluate`` logs ``eval/ganpo/*`` the same way;
- checkpoints: ``ganpo_regularizer.pt`` goes into every DeepSpeed checkpoint's tag folder
  (``--ckpt.save_steps``), every ``{tag}_hf`` folder (``--ckpt.save_hf``) and the final
  ``--ckpt.output_dir``. It is written just before DeepSpeed writes the tag's files and its
  ``latest`` pointer, so a run killed at any moment resumes from a tag holding both or from
  the previous one. With ``--ckpt.load_enable`` the state of the tag DeepSpeed loaded (its
  ``latest``) is restored before training continues.

Data parallel: the regularizer reduces discriminator gradients and running means over
``strategy.ds_device_mesh["dp"]``, so every rank keeps identical discriminators.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from deepspeed.accelerator import get_accelerator
from openrlhf.trainer.dpo_trainer import DPOTrainer

from ganpo_plugins import (
    LatentBatch,
    PairLogps,
    RegularizerConfig,
    RegularizerContext,
    RegularizerRunner,
    StepInfo,
    attach,
)
from ganpo_plugins.report import announce
from ganpo_plugins.taps import hidden_size

__all__ = ["GANPODPOTrainer", "OpenRLHFAttachment"]


class GANPODPOTrainer(DPOTrainer):
    """OpenRLHF's DPOTrainer with the regularizer configured by ``args.ganpo`` attached."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ganpo_attachment = attach(self, self.args.ganpo)


class OpenRLHFAttachment:
    """A regularizer attached to one OpenRLHF ``DPOTrainer`` (see the module docstring)."""

    WRAPPED: ClassVar[dict[str, str]] = {
        "trainer.loss_fn": "restored",
        "trainer.concatenated_forward, trainer.save_logs_and_checkpoints, trainer.evaluate, trainer.fit": (
            "instance attributes removed"
        ),
        "the policy's DeepSpeed engine .save_checkpoint": "instance attribute removed",
        "forward hooks on the decoder bodies of policy and reference": "removed",
    }

    def __init__(self, trainer: Any, config: RegularizerConfig) -> None:
        self.trainer = trainer
        self.config = config
        self.runner = RegularizerRunner(config, self._context(), trainer.model, trainer.ref_model)
        self.preference = self.runner.preference_loss()
        self._masks: tuple[torch.Tensor, torch.Tensor] | None = None
        self._host_loss_fn = trainer.loss_fn
        trainer.loss_fn = self._loss
        self.engine = trainer.model.model
        wrapped = {
            "concatenated_forward": self._concatenated_forward,
            "save_logs_and_checkpoints": self._save_logs_and_checkpoints,
            "evaluate": self._evaluate,
            "fit": self._fit,
        }
        self._originals: dict[str, Callable[..., Any]] = {name: getattr(trainer, name) for name in wrapped}
        for name, method in wrapped.items():
            setattr(trainer, name, method)
        self._engine_save = self.engine.save_checkpoint
        self.engine.save_checkpoint = self._save_with_deepspeed_checkpoint
        announce(
            f"ganpo: {config.regularizer} regularizer ON (weight λ={config.weight}) in OpenRLHF "
            f"{type(trainer).__name__}; base loss: "
            f"{f'{config.preference_loss} (computed by ganpo_plugins)' if self.preference else 'OpenRLHF DPOLoss'}; "
            "hidden states: the decoder's final-norm output of OpenRLHF's own policy and reference forwards; the "
            "logged loss includes λ·L_reg (train/ganpo/* metrics: docs/metrics.md)",
            is_main_process=trainer.strategy.is_rank_0(),
        )

    def _context(self) -> RegularizerContext:
        trainer = self.trainer
        args = trainer.args
        # The policy's schedule length and warm-up, computed as openrlhf.cli.train_dpo does.
        total_steps = math.ceil(trainer.epochs * (len(trainer.train_dataloader.dataset) // args.train.batch_size))
        return RegularizerContext(
            hidden_size=hidden_size(trainer.model),
            ref_hidden_size=hidden_size(trainer.ref_model),
            policy_lr=args.adam.lr,
            total_steps=max(1, total_steps),
            warmup_steps=math.ceil(total_steps * args.lr_warmup_ratio),
            accumulation_steps=trainer.strategy.accumulated_gradient,
            device=torch.device(get_accelerator().current_device_name()),
            seed=args.train.seed,
            process_group=trainer.strategy.ds_device_mesh["dp"].get_group(),
        )

    def detach(self) -> None:
        """Undo everything in :attr:`WRAPPED`."""
        trainer = self.trainer
        trainer.loss_fn = self._host_loss_fn
        for name in self._originals:
            trainer.__dict__.pop(name, None)
        self._originals.clear()
        self.engine.save_checkpoint = self._engine_save
        self.runner.close()

    # -- per micro-step ------------------------------------------------------------------------

    def _concatenated_forward(self, model, chosen_ids, c_mask, reject_ids, r_mask, prompt_id_lens):
        trainer = self.trainer
        is_policy = model is trainer.model
        if is_policy:
            self.runner.tap.take()  # a micro-step starts with the policy forward: drop stale records
        out = self._originals["concatenated_forward"](model, chosen_ids, c_mask, reject_ids, r_mask, prompt_id_lens)
        if is_policy:
            _, att_masks, row_prompt_lens = trainer.concatenated_inputs(
                chosen_ids, c_mask, reject_ids, r_mask, prompt_id_lens
            )
            positions = torch.arange(att_masks.shape[1], device=att_masks.device)
            prompt_lens = torch.as_tensor(row_prompt_lens, device=att_masks.device)
            response = (positions[None, :] >= prompt_lens[:, None]) & att_masks.bool()
            self._masks = (att_masks, response)
        return out

    def _loss(self, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps):
        attention, response = self._masks
        beta = self.trainer.beta
        if self.preference is None:
            loss, chosen_reward, rejected_reward = self._host_loss_fn(
                chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps
            )
        else:
            # Response token counts, as OpenRLHF's _get_batch_logps counts them (labels start at 1).
            lengths = response[:, 1:].sum(-1).chunk(2)
            pair = PairLogps(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *lengths)
            loss = self.preference(pair, beta, self.config.simpo_gamma).mean()
            if self.preference.reference_free:  # SimPO's implicit reward: β · mean log-prob
                chosen_reward = beta * (chosen_logps / lengths[0].clamp_min(1)).detach()
                rejected_reward = beta * (rejected_logps / lengths[1].clamp_min(1)).detach()
            else:  # DPO's implicit reward, as OpenRLHF's DPOLoss reports it
                chosen_reward = beta * (chosen_logps - ref_chosen_logps).detach()
                rejected_reward = beta * (rejected_logps - ref_rejected_logps).detach()
        policy_h, ref_h = self.runner.latents()
        batch = LatentBatch.from_concatenated(policy_h, ref_h, attention, response)
        if torch.is_grad_enabled() and self.trainer.model.training:
            info = StepInfo(self.engine.is_gradient_accumulation_boundary(), self.engine.gradient_accumulation_steps())
            loss = loss + self.runner.step(batch, info)
        else:
            with torch.no_grad():
                self.runner.step(batch, None)
        return loss, chosen_reward, rejected_reward

    # -- logs, evaluation, checkpoints --------------------------------------------------------

    def _save_logs_and_checkpoints(self, args, global_step, step_bar, logs_dict=None, client_states=None):
        logs_dict = {} if logs_dict is None else logs_dict
        logs_dict.update(self.runner.pop_metrics("train", global_step))
        self._originals["save_logs_and_checkpoints"](args, global_step, step_bar, logs_dict, client_states)
        if self.trainer.save_hf_ckpt and global_step % args.ckpt.save_steps == 0:
            self.runner.save(os.path.join(args.ckpt.path, f"global_step{global_step}_hf"))

    def _evaluate(self, eval_dataloader, steps=0):
        self._originals["evaluate"](eval_dataloader, steps)
        trainer = self.trainer
        metrics = self.runner.pop_metrics("eval")
        if not (metrics and trainer.strategy.is_rank_0()):
            return
        if trainer._wandb is not None:
            trainer._wandb.log({**{f"eval/{k}": v for k, v in metrics.items()}, "eval/global_step": steps})
        elif trainer._tensorboard is not None:
            for k, v in metrics.items():
                trainer._tensorboard.add_scalar(f"eval/{k}", v, steps)

    def _save_with_deepspeed_checkpoint(self, save_dir, tag=None, *args: Any, **kwargs: Any):
        folder_tag = tag if tag is not None else f"global_step{self.engine.global_steps}"
        self.runner.save(os.path.join(save_dir, str(folder_tag)))
        return self._engine_save(save_dir, tag, *args, **kwargs)

    def _fit(self, args, consumed_samples=0, num_update_steps_per_epoch=None):
        if args.ckpt.load_enable and consumed_samples > 0:  # the CLI loaded a DeepSpeed checkpoint
            pointer = Path(args.ckpt.path, "latest_universal" if self.engine.load_universal_checkpoint() else "latest")
            tag = pointer.read_text().strip()
            restored = self.runner.load(Path(args.ckpt.path, tag))
            if restored is not None:
                self.trainer.strategy.print(f"ganpo: restored the regularizer state from {restored}")
        self._originals["fit"](args, consumed_samples, num_update_steps_per_epoch)
        self.runner.save(args.ckpt.output_dir)
