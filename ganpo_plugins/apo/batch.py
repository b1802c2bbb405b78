"""The ``is_apo`` flag of each pair on its way from a data row to a host's batch, and the APO
accuracies of a batch: the pieces every host's reward-model glue shares (the loss itself is
:func:`ganpo_plugins.formulas.functional.apo_rm_loss`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .data import APODataError

__all__ = ["IS_APO", "APODataCollator", "apo_accuracies", "apo_pair_counts", "row_is_apo"]

#: The row field ``ganpo-apo pairs`` writes: ``true`` for an APO pair, ``false`` for a human pair.
IS_APO = "is_apo"


def row_is_apo(row: Mapping[str, Any], where: str) -> bool:
    """The row's flag (absent or null: a human pair); anything but a boolean is an :class:`APODataError`
    naming ``where``."""
    flag = row.get(IS_APO)
    if flag is None:
        return False
    if not isinstance(flag, bool):
        raise APODataError(
            f"{where}: {IS_APO!r} must be true or false (APO pair or human pair), got {flag!r}; "
            "write the pairs with `ganpo-apo pairs`"
        )
    return flag


class APODataCollator:
    """Wraps a host's collator: the per-pair ``is_apo`` flags ride beside its batch as a bool tensor
    ``[B]`` (the host's collator never sees the field). Rows without the field are human pairs."""

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]]):
        self.collator = collator

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        flags = [bool(ex.get(IS_APO, False)) for ex in examples]
        batch = self.collator([{k: v for k, v in ex.items() if k != IS_APO} for ex in examples])
        batch[IS_APO] = torch.tensor(flags, dtype=torch.bool)
        return batch


def apo_pair_counts(chosen: torch.Tensor, rejected: torch.Tensor, is_apo: torch.Tensor) -> torch.Tensor:
    """``[golden wins, APO pairs, chosen wins, human pairs]`` of one batch (summable over batches
    and processes): the counts behind :func:`apo_accuracies`."""
    correct = (chosen > rejected).float()
    apo = is_apo.to(correct.device).float()
    return torch.stack([(correct * apo).sum(), apo.sum(), (correct * (1 - apo)).sum(), (1 - apo).sum()])


def apo_accuracies(counts: Sequence[float]) -> dict[str, float]:
    """``apo/fraction`` (the share of APO pairs), ``apo/accuracy_apo`` (how often the golden response
    outscores the LLM's sample) and ``apo/accuracy_human``, each only where its pairs exist."""
    hits_apo, n_apo, hits_human, n_human = (float(c) for c in counts)
    metrics = {"apo/fraction": n_apo / max(n_apo + n_human, 1.0)}
    if n_apo:
        metrics["apo/accuracy_apo"] = hits_apo / n_apo
    if n_human:
        metrics["apo/accuracy_human"] = hits_human / n_human
    return metrics
