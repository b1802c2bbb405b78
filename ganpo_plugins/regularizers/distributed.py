"""Collectives a stateful regularizer needs to keep every data-parallel rank identical."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_reduce_sum",
    "average_gradients",
    "broadcast_buffers",
    "data_parallel_group",
    "mean_over_ranks",
    "rank",
    "resync_if_diverged",
]


def data_parallel_group(group: Any = None) -> Any:
    """``group`` if given, else the default group when torch.distributed runs on > 1 process,
    else ``None`` (nothing to reduce)."""
    if group is not None:
        return group
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_sum(tensor: Tensor, group: Any) -> Tensor:
    """Sum ``tensor`` in place over ``group`` (no-op without a group)."""
    if group is not None:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def average_gradients(params: Iterable[torch.nn.Parameter], group: Any) -> None:
    """Replace each gradient by its mean over ``group`` with one flat all-reduce, as DDP does.

    Parameters without a gradient take part as zeros, so every rank sends the same layout.
    """
    if group is None:
        return
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat /= dist.get_world_size(group)
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def broadcast_buffers(module: torch.nn.Module, group: Any) -> None:
    """Copy every buffer of ``module`` from the group's first rank to the others, as DDP does.

    Buffers such as spectral norm's power-iteration vectors advance with each training forward;
    a rank that skipped a batch would otherwise drift.
    """
    if group is None:
        return
    src = dist.get_global_rank(group, 0)
    for buffer in module.buffers():
        dist.broadcast(buffer, src=src, group=group)


def resync_if_diverged(tensors: list[torch.Tensor], group: Any) -> bool:
    """Make ``tensors`` identical on every rank of ``group`` if they are not; True if they were not.

    Identical gradients and identical updates should keep ranks bit-identical, but nothing in
    floating point promises it across processes. A float64 checksum per rank (one two-element
    all-reduce) detects any drift; only then are the tensors broadcast from the first rank.
    """
    if group is None:
        return False
    checksum = torch.stack([t.detach().double().sum() for t in tensors]).sum()
    extremes = torch.stack([checksum, -checksum])
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX, group=group)
    if extremes[0] == -extremes[1]:
        return False
    src = dist.get_global_rank(group, 0)
    for tensor in tensors:
        dist.broadcast(tensor.data, src=src, group=group)
    return True


def mean_over_ranks(values: dict[str, float], group: Any = None) -> dict[str, float]:
    """Each value averaged over the ranks of ``group`` that have it (ranks may differ in keys
    when one of them skipped a batch, so this is one object gather, not a per-key collective).
    Without an initialised process group, ``values`` unchanged."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) <= 1:
        return values
    gathered: list[dict[str, float] | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, values, group=group)
    keys = sorted({k for g in gathered if g for k in g})
    return {k: sum(g[k] for g in gathered if g and k in g) / sum(1 for g in gathered if g and k in g) for k in keys}
