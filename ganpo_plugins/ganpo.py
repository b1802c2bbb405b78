"""GANPO: latent adversarial regularization with two relativistic discriminators (arXiv 2601.22083).

All state of the method lives here: the discriminators D+ and D−, the six running means μ,
the discriminators' optimisers and schedule, their RNG stream, and the data-parallel sync.
The formulas are in :mod:`ganpo_plugins.functional`; docs/methods.md states the method and
every deviation from the public release.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .config import GANPOConfig
from .discriminators import compact_positions, pad_and_stack
from .distributed import all_reduce_sum, average_gradients, broadcast_buffers, data_parallel_group, resync_if_diverged
from .functional import lr_schedule_factor, ragan_discriminator_loss, ragan_generator_loss
from .protocol import LatentBatch, Metrics, RegularizerContext, RegularizerOutput, StepInfo
from .registry import resolve

__all__ = ["SIDES", "GANPORegularizer"]

# Order of the six running means: for each discriminator, its (real, fake, other) inputs.
# D+: (h_r+, h_θ+, h_r−) → μ+(r+), μ+(θ), μ+(r−);  D−: (h_r−, h_θ−, h_r+) → μ−(r−), μ−(θ), μ−(r+).
SIDES = ("pos", "neg")
_ROLES = ("real", "fake", "other")


def _saturated(accuracy: float) -> bool:
    return accuracy >= 0.99 or accuracy <= 0.51


class GANPORegularizer:
    """The GANPO latent regularizer; satisfies :class:`~ganpo_plugins.protocol.LatentRegularizer`."""

    name = "ganpo"
    config_keys = frozenset({"max_positions", "ema_momentum", "discriminator", "optimizer", "saturation_patience"})

    def __init__(self, config: GANPOConfig, context: RegularizerContext) -> None:
        if context.ref_hidden_size not in (None, context.hidden_size):
            raise ValueError(
                f"policy hidden size {context.hidden_size} differs from reference hidden size "
                f"{context.ref_hidden_size}: GANPO compares the two latent spaces position by position "
                "and needs a reference of the same architecture (use the policy's own base model)"
            )
        self.config = config
        self.weight = config.weight
        self.mask = config.mask
        self.accumulation_steps = context.accumulation_steps
        self.total_steps = context.total_steps
        opt = config.optimizer
        self.warmup_steps = context.warmup_steps if opt.warmup_steps is None else opt.warmup_steps
        self.device = torch.device(context.device)
        self.group = data_parallel_group(context.process_group)
        factory = resolve("discriminator", config.discriminator.kind)
        seed = context.seed if config.seed is None else config.seed
        # Own RNG stream: initialisation and dropout never touch (or depend on) the host's RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.discriminators = nn.ModuleDict({side: factory(context.hidden_size, config) for side in SIDES}).to(
                self.device, torch.float32
            )
            self._cpu_rng = torch.get_rng_state()
        self._cuda_rng = None
        if self.device.type == "cuda":
            with torch.random.fork_rng(devices=[self.device]):
                torch.cuda.manual_seed(seed)
                self._cuda_rng = torch.cuda.get_rng_state(self.device)
        self.base_lr = opt.lr if opt.lr is not None else context.policy_lr * opt.lr_ratio
        self.policy_steps = 0  # policy optimiser steps seen (accumulation boundaries): drives the schedule
        self.optimizers = {
            side: torch.optim.AdamW(
                self.discriminators[side].parameters(),
                lr=self._scheduled_lr(),
                betas=opt.betas,
                eps=opt.eps,
                weight_decay=opt.weight_decay,
            )
            for side in SIDES
        }
        self.mu = torch.zeros(2, 3, device=self.device)  # [side, role]
        self.mu_initialized = False
        self.disc_steps = 0  # discriminator optimiser steps taken
        self._pending = 0  # micro-batches with gradients since the last optimiser step
        self.skipped_updates = 0
        self.rank_resyncs = 0  # times the discriminators were found to differ between ranks
        self.saturated_run = [0, 0]
        self._warned: set[str] = set()

    # -- helpers ---------------------------------------------------------------------------

    def _scheduled_lr(self) -> float:
        """The lr of the next optimiser step: ``base_lr · factor(policy_steps)``, so the k-th
        policy step's discriminator steps use ``factor(k − 1)``, as the policy's k-th step does."""
        opt = self.config.optimizer
        return self.base_lr * lr_schedule_factor(opt.scheduler, self.policy_steps, self.warmup_steps, self.total_steps)

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

    @contextlib.contextmanager
    def _frozen_eval(self) -> Iterator[None]:
        """Discriminators in eval mode with no parameter gradients (the generator term)."""
        params = list(self.discriminators.parameters())
        was_training = self.discriminators.training
        flags = [p.requires_grad for p in params]
        self.discriminators.eval()
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in zip(params, flags, strict=True):
                p.requires_grad_(flag)
            self.discriminators.train(was_training)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _select(self, batch: LatentBatch) -> tuple[list[tuple[Tensor, Tensor]], bool]:
        """Compact the four latents to their selected positions: ``[(h, mask)]`` in the order
        (r+, θ+, r−, θ−), dropping pairs where either side selects nothing. The flag is false
        when nothing usable is left or a selected value is not finite."""
        mask_c, mask_r = batch.positions(self.mask)
        keep = mask_c.any(1) & mask_r.any(1)
        if not bool(keep.any()):
            self._warn_once(
                "empty", "GANPO: a batch had no selected positions in any pair; its regularizer step was skipped"
            )
            return [], False
        parts = []
        for hidden, mask in (
            (batch.ref_chosen, mask_c),
            (batch.policy_chosen, mask_c),
            (batch.ref_rejected, mask_r),
            (batch.policy_rejected, mask_r),
        ):
            h, m = compact_positions(hidden[keep], mask[keep], self.config.max_positions)
            parts.append((h.float(), m))
        finite = all(bool(torch.isfinite(h).all()) for h, _ in parts)
        if not finite:
            self._warn_once(
                "nonfinite",
                "GANPO: non-finite hidden states in a batch; its regularizer step was skipped "
                "(counted in ganpo/skipped)",
            )
        return parts, finite

    def _scores(self, parts: list[tuple[Tensor, Tensor]]) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        """Each discriminator scores its (real, fake, other) inputs in one batched forward."""
        ref_c, pol_c, ref_r, pol_r = parts
        inputs = {"pos": (ref_c, pol_c, ref_r), "neg": (ref_r, pol_r, ref_c)}
        scores = {}
        for side in SIDES:
            hidden, mask = pad_and_stack([(h.detach(), m) for h, m in inputs[side]])
            scores[side] = tuple(self.discriminators[side](hidden, mask).chunk(3))
        return scores

    # -- protocol ----------------------------------------------------------------------------

    def update(self, batch: LatentBatch, info: StepInfo) -> Metrics:
        """One discriminator micro-step; at ``info.is_boundary`` the optimisers step
        (``update_ratio`` times, all at this policy step's lr), then the schedule advances."""
        metrics = self._discriminator_pass(batch, 1.0 / info.accumulation_steps)
        if info.is_boundary:
            self._optimizer_step()
            for _ in range(self.config.optimizer.update_ratio - 1):
                self._discriminator_pass(batch, 1.0)
                self._optimizer_step()
            self._scheduler_step()
            metrics.update(self._track_saturation(metrics))
        return metrics

    def _discriminator_pass(self, batch: LatentBatch, loss_scale: float) -> Metrics:
        parts, usable = self._select(batch)
        self.discriminators.train()
        with torch.autocast(self.device.type, enabled=False), self._own_rng():
            scores = self._scores(parts) if usable else None
        if scores is not None and not all(bool(torch.isfinite(s).all()) for t in scores.values() for s in t):
            self._warn_once("nonfinite_scores", "GANPO: non-finite discriminator scores; regularizer step skipped")
            scores = None
        # Every rank joins the same collective, even with a skipped batch, so none waits forever.
        valid = torch.tensor([0.0 if scores is None else 1.0], device=self.device)
        means = torch.zeros(2, 3, device=self.device)
        if scores is not None:
            means = torch.stack([torch.stack([s.detach().mean() for s in scores[side]]) for side in SIDES])
        stats = all_reduce_sum(torch.cat([means.flatten() * valid, valid]), self.group)
        if stats[-1] > 0:
            batch_means = (stats[:-1] / stats[-1]).view(2, 3).clone()
            m = self.config.ema_momentum
            self.mu = batch_means if not self.mu_initialized else m * self.mu + (1 - m) * batch_means
            self.mu_initialized = True
        if scores is None:
            self.skipped_updates += 1
            return {"skipped": 1.0}
        metrics: Metrics = {"skipped": 0.0}
        total = torch.zeros((), device=self.device)
        for i, side in enumerate(SIDES):
            real, fake, other = scores[side]
            mu_real, mu_fake, mu_other = self.mu[i]
            loss = ragan_discriminator_loss(real, fake, other, mu_real, mu_fake, mu_other)
            total = total + loss
            correct = torch.cat([real - mu_fake > 0, fake - mu_real < 0, fake - mu_other > 0, other - mu_fake < 0])
            metrics[f"d_{side}/loss"] = loss.item()
            metrics[f"d_{side}/accuracy"] = correct.float().mean().item()
            metrics[f"d_{side}/real_fake_gap"] = (real.mean() - fake.mean()).item()
            for role, value in zip(_ROLES, self.mu[i].tolist(), strict=True):
                metrics[f"d_{side}/mu_{role}"] = value
        (total * loss_scale).backward()
        self._pending += 1
        return metrics

    def _optimizer_step(self) -> None:
        params = list(self.discriminators.parameters())
        # How many micro-batches contributed gradients, over all ranks: with none anywhere
        # (every micro-batch of the window skipped) there is nothing to step on.
        contributed = all_reduce_sum(torch.tensor([float(self._pending)], device=self.device), self.group)
        self._pending = 0
        if contributed.item() == 0:
            for side in SIDES:
                self.optimizers[side].zero_grad(set_to_none=True)
            return
        average_gradients(params, self.group)
        # Post-reduce gradients are identical on every rank, so every rank decides alike.
        if not all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None):
            self._warn_once("nonfinite_grads", "GANPO: non-finite discriminator gradients; optimiser step skipped")
            self.skipped_updates += 1
        else:
            max_grad_norm = self.config.optimizer.max_grad_norm
            for side in SIDES:
                if max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(self.discriminators[side].parameters(), max_grad_norm)
                self.optimizers[side].step()
            self.disc_steps += 1
        for side in SIDES:
            self.optimizers[side].zero_grad(set_to_none=True)
        broadcast_buffers(self.discriminators, self.group)
        if resync_if_diverged(self._synced_tensors(), self.group):
            self.rank_resyncs += 1
            self._warn_once(
                "resync", "GANPO: discriminator state had drifted between ranks; re-synced from the first rank"
            )

    def _synced_tensors(self) -> list[Tensor]:
        """What every rank must hold identically: parameters and their optimiser state."""
        tensors = list(self.discriminators.parameters())
        for optimizer in self.optimizers.values():
            for state in optimizer.state.values():
                tensors.extend(v for v in state.values() if torch.is_tensor(v))
        return tensors

    def _track_saturation(self, metrics: Metrics) -> Metrics:
        out: Metrics = {}
        for i, side in enumerate(SIDES):
            acc = metrics.get(f"d_{side}/accuracy")
            if acc is None:
                continue
            self.saturated_run[i] = self.saturated_run[i] + 1 if _saturated(acc) else 0
            out[f"d_{side}/saturated_steps"] = float(self.saturated_run[i])
            if self.saturated_run[i] == self.config.saturation_patience:
                warnings.warn(
                    f"GANPO: discriminator D{'+' if side == 'pos' else '-'} has stayed saturated "
                    f"(accuracy {acc:.3f}, outside (0.51, 0.99)) for {self.saturated_run[i]} steps: "
                    "near 0.5 it cannot tell policy from reference latents; near 1 it wins outright "
                    "and its gradient to the policy vanishes (see docs/reliability.md)",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return out

    def policy_term(self, batch: LatentBatch) -> RegularizerOutput:
        """``weight · L_adv`` with frozen, eval-mode discriminators and the current μ."""
        parts, usable = self._select(batch)
        if not usable:
            return self._skipped_term(batch)
        with torch.autocast(self.device.type, enabled=False), self._frozen_eval():
            _, pol_c, _, pol_r = parts
            fake_pos = self.discriminators["pos"](*pol_c)
            fake_neg = self.discriminators["neg"](*pol_r)
            adv = ragan_generator_loss(fake_pos, self.mu[0, 0], fake_neg, self.mu[1, 0])
        if not bool(torch.isfinite(adv)):
            self._warn_once("nonfinite_scores", "GANPO: non-finite discriminator scores; regularizer step skipped")
            return self._skipped_term(batch)
        return RegularizerOutput(self.weight * adv, {"adv_loss": adv.item(), "term_skipped": 0.0})

    @staticmethod
    def _skipped_term(batch: LatentBatch) -> RegularizerOutput:
        # A constant: adds nothing and carries no NaN back into the policy's graph.
        return RegularizerOutput(torch.zeros((), device=batch.policy_chosen.device), {"term_skipped": 1.0})

    def state_dict(self) -> dict[str, Any]:
        return {
            "discriminators": self.discriminators.state_dict(),
            "optimizers": {side: self.optimizers[side].state_dict() for side in SIDES},
            "mu": self.mu.clone(),
            "mu_initialized": self.mu_initialized,
            "disc_steps": self.disc_steps,
            "policy_steps": self.policy_steps,
            "skipped_updates": self.skipped_updates,
            "rank_resyncs": self.rank_resyncs,
            "saturated_run": list(self.saturated_run),
            "cpu_rng": self._cpu_rng.clone(),
            "cuda_rng": None if self._cuda_rng is None else self._cuda_rng.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.discriminators.load_state_dict(state["discriminators"])
        for side in SIDES:
            self.optimizers[side].load_state_dict(state["optimizers"][side])
        self.mu = state["mu"].to(self.device, torch.float32)
        self.mu_initialized = bool(state["mu_initialized"])
        self.disc_steps = int(state["disc_steps"])
        self.policy_steps = int(state["policy_steps"])
        self._apply_schedule()  # the configured schedule at the restored step, as the policy's scheduler
        self.skipped_updates = int(state["skipped_updates"])
        self.rank_resyncs = int(state["rank_resyncs"])
        self.saturated_run = [int(x) for x in state["saturated_run"]]
        self._cpu_rng = state["cpu_rng"].cpu()
        if self._cuda_rng is not None and state.get("cuda_rng") is not None:
            self._cuda_rng = state["cuda_rng"].cpu()
