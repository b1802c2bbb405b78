"""The machinery of a regularizer that trains modules of its own against the policy.

:class:`LearnedRegularizer` owns what every adversarial (or otherwise learned) regularizer needs
and none should write twice: its own RNG stream, one AdamW per learned module with an lr
schedule that follows the policy's, stepping only at gradient-accumulation boundaries,
data-parallel gradient averaging and re-sync, skipping non-finite updates, and the state of all
of that. A subclass writes only its method: :meth:`~LearnedRegularizer.build_discriminators`,
:meth:`~LearnedRegularizer.discriminator_loss` and ``policy_term`` (GANPO:
:class:`~ganpo_plugins.regularizers.ganpo.GANPORegularizer`).
"""

from __future__ import annotations

import contextlib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..config import LearnedConfig
from ..formulas.functional import lr_schedule_factor
from .distributed import all_reduce_sum, average_gradients, broadcast_buffers, data_parallel_group, resync_if_diverged
from .protocol import LatentBatch, Metrics, RegularizerContext, RegularizerOutput, StepInfo

__all__ = ["LearnedRegularizer"]


class LearnedRegularizer(ABC):
    """Base of a :class:`~ganpo_plugins.regularizers.protocol.LatentRegularizer` that trains modules of its own.

    Its ``config_model`` subclasses :class:`~ganpo_plugins.config.LearnedConfig` (the
    ``optimizer:`` keys). Per training micro-step, :meth:`update` runs
    :meth:`discriminator_loss` in train mode, under the regularizer's own RNG with autocast off,
    and back-propagates it scaled by ``1 / accumulation_steps``; at an accumulation boundary it
    averages gradients over the data-parallel group, steps every optimiser
    (``optimizer.update_ratio`` times, each after a fresh pass), then advances the lr schedule.
    A subclass extends :meth:`state_dict` and :meth:`load_state_dict` with its own state.
    """

    config_model: type[LearnedConfig] = LearnedConfig
    label = "learned regularizer"  # names it in warnings
    #: The state that differs between data-parallel ranks (each draws its own dropout masks):
    #: checkpoints keep it per rank (ganpo_plugins.adapter_kit.checkpoint).
    rank_local_keys: tuple[str, ...] = ("cpu_rng", "cuda_rng")

    def __init__(self, config: LearnedConfig, context: RegularizerContext) -> None:
        self.config = config
        self.weight = config.weight
        self.mask = config.mask
        self.device = torch.device(context.device)
        self.group = data_parallel_group(context.process_group)
        opt = config.optimizer
        self.total_steps = context.total_steps
        self.warmup_steps = context.warmup_steps if opt.warmup_steps is None else opt.warmup_steps
        seed = context.seed if config.seed is None else config.seed
        # Own RNG stream: initialisation and dropout never touch (or depend on) the host's RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.discriminators = self.build_discriminators(context).to(self.device, torch.float32)
            self._cpu_rng = torch.get_rng_state()
        self._cuda_rng = None
        if self.device.type == "cuda":
            with torch.random.fork_rng(devices=[self.device]):
                torch.cuda.manual_seed(seed)
                self._cuda_rng = torch.cuda.get_rng_state(self.device)
        self.base_lr = opt.lr if opt.lr is not None else context.policy_lr * opt.lr_ratio
        self.policy_steps = 0  # policy optimiser steps seen (accumulation boundaries): drives the schedule
        self.optimizers = {
            name: torch.optim.AdamW(
                module.parameters(),
                lr=self._scheduled_lr(),
                betas=opt.betas,
                eps=opt.eps,
                weight_decay=opt.weight_decay,
            )
            for name, module in self.discriminators.items()
        }
        self.disc_steps = 0  # optimiser steps taken
        self._pending = 0  # micro-batches with gradients since the last optimiser step
        self.skipped_updates = 0
        self.rank_resyncs = 0  # times the learned modules were found to differ between ranks
        self._warned: set[str] = set()

    # -- what a subclass writes ----------------------------------------------------------------

    @abstractmethod
    def build_discriminators(self, context: RegularizerContext) -> nn.ModuleDict:
        """The learned modules, one optimiser each; built under the regularizer's own seeded RNG
        (then moved to the device in fp32)."""

    @abstractmethod
    def discriminator_loss(self, batch: LatentBatch) -> tuple[Tensor, Metrics] | None:
        """The learned modules' loss on one micro-batch and its metrics, or ``None`` to skip the
        batch (counted in ``skipped``). Runs in train mode, under the own RNG, autocast off. It
        must detach the policy latents; every rank calls it, so it may join collectives. The sides
        may differ in size; a batch with an empty side is skipped whatever this returns."""

    @abstractmethod
    def policy_term(self, batch: LatentBatch) -> RegularizerOutput:
        """``weight · L_reg``; compute it inside :meth:`_frozen_eval`."""

    def on_policy_step(self, metrics: Metrics) -> Metrics:
        """Called after each policy optimiser step with that micro-step's metrics; returns more
        metrics (e.g. saturation tracking). Default: none."""
        return {}

    # -- the protocol ----------------------------------------------------------------------------

    def update(self, batch: LatentBatch, info: StepInfo) -> Metrics:
        """One learning micro-step; at ``info.is_boundary`` the optimisers step
        (``update_ratio`` times, all at this policy step's lr), then the schedule advances."""
        metrics = self._learn(batch, 1.0 / info.accumulation_steps)
        if info.is_boundary:
            self._optimizer_step()
            for _ in range(self.config.optimizer.update_ratio - 1):
                self._learn(batch, 1.0)
                self._optimizer_step()
            self._scheduler_step()
            metrics.update(self.on_policy_step(metrics))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "discriminators": self.discriminators.state_dict(),
            "optimizers": {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()},
            "disc_steps": self.disc_steps,
            "policy_steps": self.policy_steps,
            "skipped_updates": self.skipped_updates,
            "rank_resyncs": self.rank_resyncs,
            "cpu_rng": self._cpu_rng.clone(),
            "cuda_rng": None if self._cuda_rng is None else self._cuda_rng.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.discriminators.load_state_dict(state["discriminators"])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.disc_steps = int(state["disc_steps"])
        self.policy_steps = int(state["policy_steps"])
        self._apply_schedule()  # the configured schedule at the restored step, as the policy's scheduler
        self.skipped_updates = int(state["skipped_updates"])
        self.rank_resyncs = int(state["rank_resyncs"])
        self._cpu_rng = state["cpu_rng"].cpu()
        if self._cuda_rng is not None and state.get("cuda_rng") is not None:
            self._cuda_rng = state["cuda_rng"].cpu()

    # -- helpers for subclasses --------------------------------------------------------------------

    @contextlib.contextmanager
    def _frozen_eval(self) -> Iterator[None]:
        """The learned modules in eval mode with no parameter gradients, autocast off (the
        policy term)."""
        params = list(self.discriminators.parameters())
        was_training = self.discriminators.training
        flags = [p.requires_grad for p in params]
        self.discriminators.eval()
        for p in params:
            p.requires_grad_(False)
        try:
            with torch.autocast(self.device.type, enabled=False):
                yield
        finally:
            for p, flag in zip(params, flags, strict=True):
                p.requires_grad_(flag)
            self.discriminators.train(was_training)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    @staticmethod
    def _skipped_term(batch: LatentBatch) -> RegularizerOutput:
        """A policy term that adds nothing and carries no NaN back into the policy's graph."""
        return RegularizerOutput(torch.zeros((), device=batch.policy_chosen.device), {"term_skipped": 1.0})

    # -- machinery ---------------------------------------------------------------------------------

    def _scheduled_lr(self) -> float:
        """The lr of the next optimiser step: ``base_lr · factor(policy_steps)``, so the k-th
        policy step's optimiser steps use ``factor(k − 1)``, as the policy's k-th step does."""
        scheduler = self.config.optimizer.scheduler
        return self.base_lr * lr_schedule_factor(scheduler, self.policy_steps, self.warmup_steps, self.total_steps)

    def _apply_schedule(self) -> None:
        lr = self._scheduled_lr()
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr

    def _scheduler_step(self) -> None:
        """After the policy's optimiser step, like its scheduler (Hugging Face Trainer order)."""
        self.policy_steps += 1
        self._apply_schedule()

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        cuda = [self.device] if self._cuda_rng is not None else []
        with torch.random.fork_rng(devices=cuda):
            torch.set_rng_state(self._cpu_rng)
            if cuda:
                torch.cuda.set_rng_state(self._cuda_rng, self.device)
            yield
            self._cpu_rng = torch.get_rng_state()
            if cuda:
                self._cuda_rng = torch.cuda.get_rng_state(self.device)

    def _learn(self, batch: LatentBatch, loss_scale: float) -> Metrics:
        self.discriminators.train()
        with torch.autocast(self.device.type, enabled=False), self._own_rng():
            out = self.discriminator_loss(batch)  # on every rank, even for an empty side: it may join collectives
        if batch.has_empty_side(self.mask):  # online RL, all advantages of one sign: nothing to learn
            out = None
        if out is not None and not bool(torch.isfinite(out[0])):
            self._warn_once("nonfinite_loss", f"{self.label}: non-finite discriminator loss; update skipped")
            out = None
        if out is None:
            self.skipped_updates += 1
            return {"skipped": 1.0}
        loss, metrics = out
        (loss * loss_scale).backward()
        self._pending += 1
        return {"skipped": 0.0, **metrics}

    def _optimizer_step(self) -> None:
        params = list(self.discriminators.parameters())
        # How many micro-batches contributed gradients, over all ranks: with none anywhere
        # (every micro-batch of the window skipped) there is nothing to step on.
        contributed = all_reduce_sum(torch.tensor([float(self._pending)], device=self.device), self.group)
        self._pending = 0
        if contributed.item() == 0:
            self._zero_grad()
            return
        average_gradients(params, self.group)
        # Post-reduce gradients are identical on every rank, so every rank decides alike.
        if not all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None):
            self._warn_once(
                "nonfinite_grads", f"{self.label}: non-finite discriminator gradients; optimiser step skipped"
            )
            self.skipped_updates += 1
        else:
            max_grad_norm = self.config.optimizer.max_grad_norm
            for name, optimizer in self.optimizers.items():
                if max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(self.discriminators[name].parameters(), max_grad_norm)
                optimizer.step()
            self.disc_steps += 1
        self._zero_grad()
        broadcast_buffers(self.discriminators, self.group)
        if resync_if_diverged(self._synced_tensors(), self.group):
            self.rank_resyncs += 1
            self._warn_once(
                "resync", f"{self.label}: discriminator state had drifted between ranks; re-synced from the first rank"
            )

    def _zero_grad(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)

    def _synced_tensors(self) -> list[Tensor]:
        """What every rank must hold identically: parameters and their optimiser state."""
        tensors = list(self.discriminators.parameters())
        for optimizer in self.optimizers.values():
            for state in optimizer.state.values():
                tensors.extend(v for v in state.values() if torch.is_tensor(v))
        return tensors
