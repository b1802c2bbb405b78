"""Test-only CPU shims for OpenRLHF 0.11.2 (on PYTHONPATH for host subprocesses only).

OpenRLHF assumes CUDA in four places that have nothing to do with what the tests check; these
patches give them CPU equivalents so the real ``openrlhf.cli.train_dpo`` / ``train_rm`` code
paths run on a CPU machine with DeepSpeed's CPU accelerator and gloo:

1. ``torch.cuda.set_device`` -> no-op without CUDA (``DeepspeedStrategy.setup_distributed``);
2. ``DeepspeedStrategy.all_reduce`` -> the same reduction on CPU tensors (metrics only);
3. ``DeepspeedStrategy.all_gather`` -> the same gather on CPU tensors (``train_rm`` metrics);
4. ``torch_dist_barrier_and_cuda_sync`` (as imported by the strategy module) -> ``dist.barrier``.

Each module is patched right after it is first imported (tests/patch_after_import.py, the hook
the FSDP shim uses too), so merely starting Python imports neither torch nor OpenRLHF. Set
``GANPO_CPU_SHIMS=0`` to disable.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2]))  # tests/, last: it shadows nothing
from patch_after_import import install

_STRATEGY = "openrlhf.utils.deepspeed.deepspeed"


def _patch_cuda(module) -> None:
    set_device = module.set_device

    def set_device_unless_cpu(device) -> None:
        if module.is_available():
            set_device(device)

    module.set_device = set_device_unless_cpu


def _patch_strategy(module) -> None:
    import torch
    import torch.distributed as dist

    def all_reduce(self, data, op="mean"):
        if isinstance(data, dict):
            return {k: all_reduce(self, v, op) for k, v in data.items()}
        is_tensor = isinstance(data, torch.Tensor)
        t = (data if is_tensor else torch.tensor([float(data)])).detach().cpu().clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        if op == "mean":
            t /= dist.get_world_size()
        return t if is_tensor else t.item()

    def all_gather(self, data):
        if isinstance(data, dict):
            return {k: all_gather(self, v) for k, v in data.items()}
        t = (data if isinstance(data, torch.Tensor) else torch.tensor([float(data)])).detach().cpu()
        out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(out, t)
        return torch.cat(out)

    module.DeepspeedStrategy.all_reduce = all_reduce
    module.DeepspeedStrategy.all_gather = all_gather
    module.torch_dist_barrier_and_cuda_sync = dist.barrier


if os.environ.get("GANPO_CPU_SHIMS", "1") != "0":
    install({"torch.cuda": _patch_cuda, _STRATEGY: _patch_strategy})
