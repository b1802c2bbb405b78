"""Host-agnostic glue every adapter shares: build a regularizer, run it per micro-step, average
its metrics for the host's logger, and save/restore its state beside the host's checkpoints.

An adapter's loop, whatever the host::

    runner = RegularizerRunner(config, context, policy_model, ref_model)
    runner.tap.take()                                 # drop stale records
    loss = host_loss(...)                             # the host's own forwards fill the tap
    policy_h, ref_h = runner.latents()
    batch = LatentBatch.from_concatenated(policy_h, ref_h, attention_mask, response_mask)
    loss = loss + runner.step(batch, StepInfo(is_boundary, accumulation_steps))  # None in eval
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import GANPOConfig, parse_config
from .distributed import rank
from .preference import PreferenceLoss
from .protocol import LatentBatch, LatentRegularizer, RegularizerContext, StepInfo
from .registry import notify_step_metrics, resolve
from .taps import HiddenStateTap, TapRecord

__all__ = ["STATE_FILE", "RegularizerRunner", "build_regularizer", "split_policy_reference", "state_path"]

STATE_FILE = "ganpo_regularizer.pt"
METRIC_PREFIX = "ganpo/"


def build_regularizer(config: GANPOConfig, context: RegularizerContext) -> LatentRegularizer:
    """Instantiate the configured regularizer and check that it satisfies the protocol."""
    regularizer = resolve("regularizer", config.regularizer)(config, context)
    if not isinstance(regularizer, LatentRegularizer):
        raise TypeError(
            f"regularizer {config.regularizer!r} built a {type(regularizer).__name__}, which lacks part of "
            "the LatentRegularizer protocol (name, mask, update, policy_term, state_dict, load_state_dict)"
        )
    return regularizer


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


def state_path(directory: str | os.PathLike[str], for_rank: int = 0) -> Path:
    name = STATE_FILE if for_rank == 0 else STATE_FILE.replace(".pt", f".rank{for_rank}.pt")
    return Path(directory) / name


class RegularizerRunner:
    """One regularizer attached to one host run."""

    def __init__(self, config: GANPOConfig | dict[str, Any], context: RegularizerContext, *models: Any) -> None:
        self.config = parse_config(config)
        self.regularizer = build_regularizer(self.config, context)
        self.tap = HiddenStateTap(*models)
        self._sums: dict[str, dict[str, float]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._counts: dict[str, dict[str, int]] = {"train": defaultdict(int), "eval": defaultdict(int)}

    def latents(self) -> tuple[Tensor, Tensor]:
        """Policy and reference hidden states captured since the last call."""
        return split_policy_reference(self.tap.take())

    def step(self, batch: LatentBatch, info: StepInfo | None) -> Tensor:
        """Run one micro-step and return the weighted term to add to the policy loss.

        ``info`` is ``None`` in evaluation: no update, only the term (call under no_grad).
        """
        split = "eval" if info is None else "train"
        metrics = {} if info is None else dict(self.regularizer.update(batch, info))
        out = self.regularizer.policy_term(batch)
        metrics.update(out.metrics)
        for key, value in metrics.items():
            self._sums[split][key] += value
            self._counts[split][key] += 1
        return out.loss

    def pop_metrics(self, split: str = "train", step: int | None = None) -> dict[str, float]:
        """Means of the metrics since the last pop, named ``ganpo/<metric>``; plugins observing
        ``ganpo_step_metrics`` see them first."""
        sums, counts = self._sums[split], self._counts[split]
        metrics = {METRIC_PREFIX + k: sums[k] / counts[k] for k in sums}
        sums.clear()
        counts.clear()
        if metrics and step is not None:
            notify_step_metrics(step, metrics)
        return metrics

    def preference_loss(self) -> PreferenceLoss | None:
        """The configured base preference loss, or ``None`` for the host's own."""
        name = self.config.preference_loss
        return None if name is None else resolve("preference_loss", name)

    def save(self, directory: str | os.PathLike[str]) -> Path | None:
        """Write the regularizer state into ``directory`` (rank 0; every rank with
        ``save_every_rank``). Written to a temporary file, then renamed: a crash mid-write
        never leaves a truncated state."""
        r = rank()
        if r != 0 and not self.config.save_every_rank:
            return None
        path = state_path(directory, r)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": 1,
            "regularizer": self.config.regularizer,
            "config": self.config.model_dump(mode="json"),
            "state": self.regularizer.state_dict(),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)
        return path

    def load(self, directory: str | os.PathLike[str]) -> Path | None:
        """Restore the state saved in ``directory`` (this rank's file if present, else rank 0's).
        Returns the file read, or ``None`` when the directory holds no regularizer state."""
        path = state_path(directory, rank())
        if not path.exists():
            path = state_path(directory, 0)
        if not path.exists():
            warnings.warn(
                f"{directory} holds no {STATE_FILE}: the regularizer starts fresh while the policy resumes",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("regularizer") != self.config.regularizer:
            raise ValueError(
                f"{path} holds state of regularizer {payload.get('regularizer')!r}, but the config asks for "
                f"{self.config.regularizer!r}; resume with the same regularizer or start a new run"
            )
        self.regularizer.load_state_dict(payload["state"])
        return path

    def close(self) -> None:
        self.tap.close()
