"""Attach a latent regularizer (GANPO, or any registered one) to OpenRLHF's DPOTrainer.

:class:`GANPODPOTrainer` (which the launcher puts in the base class's place) builds an
:class:`OpenRLHFAttachment` on itself once built, from the config the launcher parsed from the
``--ganpo.*`` flags (a user's :func:`ganpo_plugins.attach` on an OpenRLHF ``DPOTrainer`` reaches
the same class through the entry point ``ganpo_openrlhf.entry_point``). It wraps the trainer-instance
seams in ``WRAPPED`` (``detach()`` restores them): the masks of each batch, the loss, the logs,
evaluation and checkpoints, with the hidden states from the decoder hook on OpenRLHF's own forwards.
docs/adapters.md says how.
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

from ganpo_plugins.adapter_kit import (
    Attachment,
    HostFacts,
    LatentBatch,
    PairLogps,
    RegularizerConfig,
    RegularizerContext,
    RegularizerRunner,
    StepInfo,
    announce_on,
    check_host,
    hidden_size,
    require_host,
)

__all__ = ["GANPODPOTrainer", "OpenRLHFAttachment", "facts_from_args"]


def facts_from_args(args: Any) -> HostFacts:
    """The facts of ``openrlhf.cli.train_dpo``'s parsed flags that the host rules judge. OpenRLHF's
    DPO loss declares no GPO equivalent: a ``--ganpo.preference_loss`` is always computed here."""
    return HostFacts(
        style="flags",
        keys={
            "packing": "--ds.packing_samples",
            "sequence_parallel": "--ds.ring_attn_size",
            "ipo_enable": "--model.ipo_enable",
            "label_smoothing": "--model.label_smoothing",
        },
        loss_modifiers={
            "ipo_enable": (bool(args.model.ipo_enable), False),
            "label_smoothing": (args.model.label_smoothing, 0.0),
        },
        packing=args.ds.packing_samples,
        sequence_parallel=args.ds.ring_attn_size,
    )


class GANPODPOTrainer(DPOTrainer):
    """OpenRLHF's DPOTrainer with the regularizer configured by ``args.ganpo`` attached."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ganpo_attachment = OpenRLHFAttachment(self, self.args.ganpo)  # parsed once, from the flags


class OpenRLHFAttachment(Attachment):
    """A regularizer attached to one OpenRLHF ``DPOTrainer`` (see the module docstring)."""

    WRAPPED: ClassVar[dict[str, str]] = {
        "trainer.loss_fn": "previous value restored",
        "trainer.concatenated_forward, .save_logs_and_checkpoints, .evaluate, .fit": "instance attributes removed",
        "the policy's DeepSpeed engine .save_checkpoint": "instance attribute removed",
        **Attachment.CORE_WRAPPED,
    }

    def __init__(self, trainer: Any, config: RegularizerConfig) -> None:
        self.host = f"openrlhf {require_host('openrlhf')}"
        super().__init__(trainer, config)
        base = check_host(facts_from_args(trainer.args), config)
        self.preference = base.loss
        self.runner = RegularizerRunner(config, self._context(), trainer.model, trainer.ref_model)
        self.engine = trainer.model.model
        self._masks: tuple[torch.Tensor, torch.Tensor] | None = None
        self.wrap(
            trainer,
            {
                "loss_fn": self._loss,
                "concatenated_forward": self._concatenated_forward,
                "save_logs_and_checkpoints": self._save_logs_and_checkpoints,
                "evaluate": self._evaluate,
                "fit": self._fit,
            },
        )
        self.wrap(self.engine, {"save_checkpoint": self._save_checkpoint})
        announce_on(
            config, f"OpenRLHF {type(trainer).__name__} ({self.host})", metrics="train/ganpo/*",
            base=base.describe("OpenRLHF"),
            hidden="the decoder's final-norm output of OpenRLHF's own policy and reference forwards",
            reference="OpenRLHF's reference model", main=trainer.strategy.is_rank_0(),
        )  # fmt: skip

    def _context(self) -> RegularizerContext:
        trainer, args = self.trainer, self.trainer.args
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

    def _concatenated_forward(self, original: Callable[..., Any], model, chosen_ids, c_mask, reject_ids, r_mask, lens):
        trainer = self.trainer
        is_policy = model is trainer.model
        if is_policy:
            self.runner.tap.take()  # a micro-step starts with the policy forward: drop stale records
        out = original(model, chosen_ids, c_mask, reject_ids, r_mask, lens)
        if is_policy:
            _, att_masks, row_prompt_lens = trainer.concatenated_inputs(chosen_ids, c_mask, reject_ids, r_mask, lens)
            positions = torch.arange(att_masks.shape[1], device=att_masks.device)
            prompt_lens = torch.as_tensor(row_prompt_lens, device=att_masks.device)
            self._masks = (att_masks, (positions[None, :] >= prompt_lens[:, None]) & att_masks.bool())
        return out

    def _loss(self, original: Callable[..., Any], *logps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``logps``: the policy's and the reference's summed log-probabilities, chosen then rejected."""
        attention, response = self._masks
        if self.preference is None:
            loss, chosen_reward, rejected_reward = original(*logps)
        else:
            # Response token counts, as OpenRLHF's _get_batch_logps counts them (labels start at 1).
            pair = PairLogps(*logps, *response[:, 1:].sum(-1).chunk(2))
            loss, chosen_reward, rejected_reward = self.preference.loss_and_rewards(
                pair, self.trainer.beta, self.config.simpo_gamma
            )
            loss = loss.mean()
        batch = LatentBatch.from_concatenated(*self.runner.latents(tuple(attention.shape)), attention, response)
        if torch.is_grad_enabled() and self.trainer.model.training:
            info = StepInfo(self.engine.is_gradient_accumulation_boundary(), self.engine.gradient_accumulation_steps())
            loss = loss + self.runner.step(batch, info)
        else:
            self.runner.step(batch, None)  # the metrics only: OpenRLHF's eval loss stays its own
        return loss, chosen_reward, rejected_reward

    def _save_logs_and_checkpoints(self, original, args, global_step, step_bar, logs_dict=None, client_states=None):
        logs_dict = {} if logs_dict is None else logs_dict
        logs_dict.update(self.runner.pop_metrics("train", global_step))
        original(args, global_step, step_bar, logs_dict, client_states)
        if self.trainer.save_hf_ckpt and global_step % args.ckpt.save_steps == 0:
            self.runner.save(os.path.join(args.ckpt.path, f"global_step{global_step}_hf"))

    def _evaluate(self, original: Callable[..., Any], eval_dataloader: Any, steps: int = 0) -> None:
        original(eval_dataloader, steps)
        trainer = self.trainer
        metrics = self.runner.pop_metrics("eval")
        if not (metrics and trainer.strategy.is_rank_0()):
            return
        if trainer._wandb is not None:
            trainer._wandb.log({**{f"eval/{k}": v for k, v in metrics.items()}, "eval/global_step": steps})
        elif trainer._tensorboard is not None:
            for k, v in metrics.items():
                trainer._tensorboard.add_scalar(f"eval/{k}", v, steps)

    def _save_checkpoint(self, original: Callable[..., Any], save_dir, tag=None, *args: Any, **kwargs: Any) -> Any:
        folder_tag = tag if tag is not None else f"global_step{self.engine.global_steps}"
        self.runner.save(os.path.join(save_dir, str(folder_tag)))
        return original(save_dir, tag, *args, **kwargs)

    def _fit(self, original: Callable[..., Any], args, consumed_samples=0, num_update_steps_per_epoch=None) -> None:
        if args.ckpt.load_enable and consumed_samples > 0:  # the CLI loaded a DeepSpeed checkpoint
            pointer = Path(args.ckpt.path, "latest_universal" if self.engine.load_universal_checkpoint() else "latest")
            restored = self.runner.load(Path(args.ckpt.path, pointer.read_text().strip()))
            if restored is not None:
                self.trainer.strategy.print(f"ganpo: restored the regularizer state from {restored}")
        original(args, consumed_samples, num_update_steps_per_epoch)
        self.runner.save(args.ckpt.output_dir)
