"""The adapter loop every host adapter shares: the regularizer a config names, the hidden states a
step captured split into policy and reference, the guarded micro-step, and the metrics averaged
for the host's logger. Its state beside the host's checkpoints: :mod:`.checkpoint`.

An adapter's loop, whatever the host::

    runner = RegularizerRunner(config, context, policy_model, ref_model)
    runner.tap.take()                                 # drop stale records
    loss = host_loss(...)                             # the host's own forwards fill the tap
    policy_h, ref_h = runner.latents()
    batch = LatentBatch.from_concatenated(policy_h, ref_h, attention_mask, response_mask)
    loss = loss + runner.step(batch, StepInfo(is_boundary, accumulation_steps))  # None in eval
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import RegularizerConfig
from ..formulas.preference import PreferenceLoss
from ..plugins.build import build_regularizer
from ..plugins.parse import as_config
from ..plugins.registry import notify_step_metrics, resolve
from ..regularizers.distributed import mean_over_ranks
from ..regularizers.protocol import LatentBatch, RegularizerContext, StepInfo
from .announce import RunRecord
from .checkpoint import load_state, save_state
from .taps import HiddenStateTap, TapRecord

__all__ = ["METRIC_PREFIX", "RegularizerRunner", "split_policy_reference"]

METRIC_PREFIX = "ganpo/"


def split_policy_reference(records: list[TapRecord]) -> tuple[Tensor, Tensor]:
    """Policy and reference hidden states from one step's tap records.

    Two tapped models: source 0 is the policy, source 1 the reference. One tapped model (LoRA,
    where the reference is the adapter-disabled policy): the record with gradient is the
    policy; without gradient anywhere (evaluation), the first call is the policy.
    """
    if len(records) != 2:
        raise RuntimeError(
            f"expected one policy and one reference forward per step, captured {len(records)}; "
            "the host ran forwards the adapter does not know about (packing, padding-free or "
            "separate chosen/rejected forwards are not supported)"
        )
    first, second = records
    if first.source != second.source:
        policy, ref = sorted(records, key=lambda r: r.source)
    elif first.grad_enabled != second.grad_enabled:
        policy, ref = (first, second) if first.grad_enabled else (second, first)
    else:
        policy, ref = first, second
    return policy.hidden, ref.hidden.detach()


class RegularizerRunner:
    """One regularizer attached to one host run."""

    def __init__(self, config: RegularizerConfig | dict[str, Any], context: RegularizerContext, *models: Any) -> None:
        self.config = as_config(config)
        self.group = context.process_group  # None: the default group, when distributed
        self.regularizer = build_regularizer(self.config, context)
        self.tap = HiddenStateTap(*models)
        self._sums: dict[str, dict[str, float]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._counts: dict[str, dict[str, int]] = {"train": defaultdict(int), "eval": defaultdict(int)}
        self._warned_nonfinite = False
        self.record = RunRecord()  # for the closing summary

    def latents(
        self, shape: tuple[int, ...] | None = None, reference: Callable[[], Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Policy and reference hidden states ``[2B, T, H]`` captured since the last call.

        ``reference``: where the host ran no reference forward, the adapter's own (the tap then
        holds the policy's only). ``shape``: the ``[2B, T]`` of the batch's input ids, which the
        hidden states must cover (one per input token)."""
        records = self.tap.take()
        if reference is None:
            policy_h, ref_h = split_policy_reference(records)
        elif len(records) != 1:
            raise RuntimeError(
                f"expected one policy forward per step, captured {len(records)}; the host ran forwards the adapter "
                "does not know about (separate chosen/rejected forwards are not supported)"
            )
        else:
            policy_h, ref_h = records[0].hidden, reference()
        if shape is not None and (tuple(policy_h.shape[:2]) != tuple(shape) or tuple(ref_h.shape[:2]) != tuple(shape)):
            raise RuntimeError(
                f"hidden states {tuple(policy_h.shape[:2])} (policy) / {tuple(ref_h.shape[:2])} (reference) do not "
                f"cover the batch {tuple(shape)}: the host packed the sequences or added virtual tokens "
                "(prompt-learning PEFT); the regularizer needs one hidden state per input token"
            )
        return policy_h, ref_h.detach().to(policy_h.device)

    def step(self, batch: LatentBatch, info: StepInfo | None) -> Tensor:
        """Run one micro-step and return the weighted term to add to the policy loss.

        ``info`` is ``None`` in evaluation: no update, only the term (computed without gradient).
        A batch with an empty side gets no term (a constant zero, ``ganpo/term_skipped``; a learned
        regularizer's ``update`` skips it too). The regularizer sees zeros at the positions its
        ``mask`` does not select, and a non-finite term is replaced by a constant zero
        (``ganpo/term_skipped``), so whatever a regularizer does, no NaN or inf reaches the policy's
        loss or gradients.
        """
        split = "eval" if info is None else "train"
        batch = _zero_unseen(batch, self.regularizer.mask)
        metrics = {} if info is None else dict(self.regularizer.update(batch, info))
        if batch.has_empty_side(self.regularizer.mask):
            # Online RL: every advantage of one sign (or zero). No term, no NaN from a mean over nothing.
            loss = batch.policy_chosen.new_zeros(())
            metrics["term_skipped"] = 1.0
        else:
            with torch.no_grad() if info is None else contextlib.nullcontext():
                out = self.regularizer.policy_term(batch)
            metrics.update(out.metrics)
            loss = out.loss
        if bool(torch.isfinite(loss).all()):
            metrics.setdefault("term_skipped", 0.0)
        else:
            if not self._warned_nonfinite:
                self._warned_nonfinite = True
                warnings.warn(
                    f"regularizer {self.config.regularizer!r} returned a non-finite policy term "
                    f"({loss.detach().float().sum().item()}); it was replaced by 0 for that micro-step so nothing "
                    f"non-finite reaches the policy (counted in {METRIC_PREFIX}term_skipped; warned once). "
                    f"Non-finite latents at the positions mask={self.regularizer.mask!r} selects are the usual cause",
                    RuntimeWarning,
                    stacklevel=2,
                )
            loss = torch.zeros_like(loss)  # a constant: no gradient, so no NaN flows back
            metrics["term_skipped"] = 1.0
        if info is not None:
            self.record.micro_step(metrics)
        for key, value in metrics.items():
            self._sums[split][key] += value
            self._counts[split][key] += 1
        return loss

    def add_metrics(self, metrics: Mapping[str, float], split: str = "train") -> None:
        """Add an adapter's own per-micro-step metrics (e.g. how many completions fed each side):
        averaged, prefixed and logged with the regularizer's by :meth:`pop_metrics`."""
        for key, value in metrics.items():
            self._sums[split][key] += float(value)
            self._counts[split][key] += 1

    def pop_metrics(self, split: str = "train", step: int | None = None) -> dict[str, float]:
        """Means of the metrics since the last pop, named ``ganpo/<metric>``, averaged over the
        data-parallel group (so a metric means the same on every host and rank count); plugins
        observing ``ganpo_step_metrics`` see them first. Every rank must call it (a collective
        under data parallelism)."""
        sums, counts = self._sums[split], self._counts[split]
        local = {METRIC_PREFIX + k: sums[k] / counts[k] for k in sums}
        sums.clear()
        counts.clear()
        metrics = mean_over_ranks(local, self.group)
        if split == "train":
            self.record.logged(metrics, step)
        if metrics and step is not None:
            notify_step_metrics(step, metrics)
        return metrics

    def preference_loss(self) -> PreferenceLoss | None:
        """The configured base preference loss, or ``None`` for the host's own."""
        name = self.config.preference_loss
        return None if name is None else resolve("preference_loss", name)

    def save(self, directory: str | os.PathLike[str]) -> Path | None:
        """Write the regularizer state into ``directory`` (:func:`.checkpoint.save_state`)."""
        return save_state(self.regularizer, self.config, directory)

    def load(self, directory: str | os.PathLike[str]) -> Path | None:
        """Restore the state saved in ``directory`` (:func:`.checkpoint.load_state`); the file read,
        or ``None`` when the directory holds none."""
        return load_state(self.regularizer, self.config, directory)

    def close(self) -> None:
        self.tap.close()


def _zero_unseen(batch: LatentBatch, mode: str) -> LatentBatch:
    """``batch`` with every latent zeroed where ``mode`` selects nothing: an inf at a prompt or
    padding position would otherwise turn into NaN under a masked mean (inf · 0)."""
    if mode == "none":
        return batch
    chosen, rejected = (m.bool().unsqueeze(-1) for m in batch.positions(mode))
    return dataclasses.replace(
        batch,
        policy_chosen=batch.policy_chosen.masked_fill(~chosen, 0),
        ref_chosen=batch.ref_chosen.masked_fill(~chosen, 0),
        policy_rejected=batch.policy_rejected.masked_fill(~rejected, 0),
        ref_rejected=batch.ref_rejected.masked_fill(~rejected, 0),
    )
