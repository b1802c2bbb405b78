"""Attach a latent regularizer (GANPO, or any registered one) to OpenRLHF 0.11.2's DPOTrainer.

:class:`GANPODPOTrainer` subclasses ``openrlhf.trainer.dpo_trainer.DPOTrainer``; the launcher
puts it in the base class's place. It touches the host only where the host offers a seam:

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
  window, averaged over data-parallel ranks) to OpenRLHF's ``logs_dict`` before it reaches the
  progress bar, wandb and TensorBoard; ``evaluate`` logs ``eval/ganpo/*`` the same way;
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

import functools
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from openrlhf.trainer.dpo_trainer import DPOTrainer

from ganpo_plugins import GANPOConfig, LatentBatch, PairLogps, RegularizerContext, RegularizerRunner, StepInfo
from ganpo_plugins.taps import hidden_size

__all__ = ["GANPODPOTrainer"]

# The few regularizer metrics also shown in the progress bar (all of them go to wandb/TensorBoard).
_BAR_METRICS = ("ganpo/adv_loss", "ganpo/d_pos/accuracy", "ganpo/d_neg/accuracy")


def _mean_over_ranks(metrics: dict[str, float], group: Any) -> dict[str, float]:
    """Average each metric over the ranks that have it (ranks may differ in keys when one of
    them skipped a batch, so no per-key collective)."""
    if not (dist.is_initialized() and dist.get_world_size(group) > 1):
        return metrics
    gathered: list[dict[str, float] | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, metrics, group=group)
    keys = sorted({k for g in gathered if g for k in g})
    return {k: sum(g[k] for g in gathered if g and k in g) / sum(1 for g in gathered if g and k in g) for k in keys}


class GANPODPOTrainer(DPOTrainer):
    """OpenRLHF's DPOTrainer plus a latent regularizer configured by ``args.ganpo``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ganpo: GANPOConfig = self.args.ganpo
        self.dp_group = self.strategy.ds_device_mesh["dp"].get_group()
        self.runner = RegularizerRunner(self.ganpo, self._context(), self.model, self.ref_model)
        self.preference = self.runner.preference_loss()
        self._host_loss_fn = self.loss_fn
        self.loss_fn = self._loss
        self._masks: tuple[torch.Tensor, torch.Tensor] | None = None
        self._save_state_with_deepspeed_checkpoints()
        self.strategy.print(
            f"ganpo: {self.ganpo.regularizer} (weight {self.ganpo.weight}) on the lm_head inputs of policy and "
            f"reference; base loss: {self.ganpo.preference_loss or 'OpenRLHF DPOLoss'}"
        )

    def _context(self) -> RegularizerContext:
        args = self.args
        # The policy's schedule length and warm-up, computed as openrlhf.cli.train_dpo does.
        total_steps = math.ceil(self.epochs * (len(self.train_dataloader.dataset) // args.train.batch_size))
        return RegularizerContext(
            hidden_size=hidden_size(self.model),
            ref_hidden_size=hidden_size(self.ref_model),
            policy_lr=args.adam.lr,
            total_steps=max(1, total_steps),
            warmup_steps=math.ceil(total_steps * args.lr_warmup_ratio),
            accumulation_steps=self.strategy.accumulated_gradient,
            device=torch.device(get_accelerator().current_device_name()),
            seed=args.train.seed,
            process_group=self.dp_group,
        )

    # -- per micro-step ------------------------------------------------------------------------

    def concatenated_forward(self, model, chosen_ids, c_mask, reject_ids, r_mask, prompt_id_lens):
        is_policy = model is self.model
        if is_policy:
            self.runner.tap.take()  # a micro-step starts with the policy forward: drop stale records
        out = super().concatenated_forward(model, chosen_ids, c_mask, reject_ids, r_mask, prompt_id_lens)
        if is_policy:
            _, att_masks, row_prompt_lens = self.concatenated_inputs(
                chosen_ids, c_mask, reject_ids, r_mask, prompt_id_lens
            )
            positions = torch.arange(att_masks.shape[1], device=att_masks.device)
            prompt_lens = torch.as_tensor(row_prompt_lens, device=att_masks.device)
            response = (positions[None, :] >= prompt_lens[:, None]) & att_masks.bool()
            self._masks = (att_masks, response)
        return out

    def _loss(self, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps):
        attention, response = self._masks
        if self.preference is None:
            loss, chosen_reward, rejected_reward = self._host_loss_fn(
                chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps
            )
        else:
            # Response token counts, as OpenRLHF's _get_batch_logps counts them (labels start at 1).
            lengths = response[:, 1:].sum(-1).chunk(2)
            pair = PairLogps(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *lengths)
            loss = self.preference(pair, self.beta, self.ganpo.simpo_gamma).mean()
            if self.preference.reference_free:  # SimPO's implicit reward: β · mean log-prob
                chosen_reward = self.beta * (chosen_logps / lengths[0].clamp_min(1)).detach()
                rejected_reward = self.beta * (rejected_logps / lengths[1].clamp_min(1)).detach()
            else:  # DPO's implicit reward, as OpenRLHF's DPOLoss reports it
                chosen_reward = self.beta * (chosen_logps - ref_chosen_logps).detach()
                rejected_reward = self.beta * (rejected_logps - ref_rejected_logps).detach()
        policy_h, ref_h = self.runner.latents()
        batch = LatentBatch.from_concatenated(policy_h, ref_h, attention, response)
        if torch.is_grad_enabled() and self.model.training:
            engine = self.model.model
            info = StepInfo(engine.is_gradient_accumulation_boundary(), engine.gradient_accumulation_steps())
            loss = loss + self.runner.step(batch, info)
        else:
            with torch.no_grad():
                self.runner.step(batch, None)
        return loss, chosen_reward, rejected_reward

    # -- logs, evaluation, checkpoints --------------------------------------------------------

    def save_logs_and_checkpoints(self, args, global_step, step_bar, logs_dict=None, client_states=None):
        logs_dict = {} if logs_dict is None else logs_dict
        metrics = _mean_over_ranks(self.runner.pop_metrics("train", global_step), self.dp_group)
        if metrics:
            logs_dict.update(metrics)
            step_bar.set_postfix(
                {k: v for k, v in logs_dict.items() if not k.startswith("ganpo/") or k in _BAR_METRICS}
            )
        super().save_logs_and_checkpoints(args, global_step, step_bar, logs_dict, client_states)
        if self.save_hf_ckpt and global_step % args.ckpt.save_steps == 0:
            self.runner.save(os.path.join(args.ckpt.path, f"global_step{global_step}_hf"))

    def evaluate(self, eval_dataloader, steps=0):
        super().evaluate(eval_dataloader, steps)
        metrics = _mean_over_ranks(self.runner.pop_metrics("eval"), self.dp_group)
        if not (metrics and self.strategy.is_rank_0()):
            return
        if self._wandb is not None:
            self._wandb.log({**{f"eval/{k}": v for k, v in metrics.items()}, "eval/global_step": steps})
        elif self._tensorboard is not None:
            for k, v in metrics.items():
                self._tensorboard.add_scalar(f"eval/{k}", v, steps)

    def _save_state_with_deepspeed_checkpoints(self) -> None:
        engine = self.model.model
        save_checkpoint = engine.save_checkpoint

        @functools.wraps(save_checkpoint)
        def save_with_regularizer(save_dir, tag=None, *args: Any, **kwargs: Any):
            folder_tag = tag if tag is not None else f"global_step{engine.global_steps}"
            self.runner.save(os.path.join(save_dir, str(folder_tag)))
            return save_checkpoint(save_dir, tag, *args, **kwargs)

        engine.save_checkpoint = save_with_regularizer

    def fit(self, args, consumed_samples=0, num_update_steps_per_epoch=None):
        if args.ckpt.load_enable and consumed_samples > 0:  # the CLI loaded a DeepSpeed checkpoint
            engine = self.model.model
            pointer = Path(args.ckpt.path, "latest_universal" if engine.load_universal_checkpoint() else "latest")
            tag = pointer.read_text().strip()
            restored = self.runner.load(Path(args.ckpt.path, tag))
            if restored is not None:
                self.strategy.print(f"ganpo: restored the regularizer state from {restored}")
        super().fit(args, consumed_samples, num_update_steps_per_epoch)
        self.runner.save(args.ckpt.output_dir)
