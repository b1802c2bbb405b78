"""Test-only: let accelerate take its FSDP path on CPU (on PYTHONPATH of the FSDP tests' torchrun
workers only; never part of the package).

accelerate turns a run's FSDP plugin on only for accelerator distributed types (MULTI_GPU,
MULTI_NPU, ...), never for MULTI_CPU: on a CPU machine a run configured for FSDP silently
trains under DDP (DESIGN.md, "FSDP on CPU"). Right after ``accelerate.state`` is imported, this
wraps ``AcceleratorState.__init__`` so that a MULTI_CPU state given an FSDP plugin becomes an
FSDP state holding it on the device ``cpu``, as it would on GPUs; everything after that is
accelerate's, TRL's and torch's own FSDP code over gloo.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Callable
from typing import Any, ClassVar


def _patch_state(module: Any) -> None:
    import torch
    from accelerate.utils import DistributedType

    init = module.AcceleratorState.__init__
    cpu = torch.device("cpu")

    def init_with_fsdp_on_cpu(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        # A later AcceleratorState() (no arguments) re-reads PartialState: keep the plugin it holds.
        plugin = kwargs.get("fsdp_plugin") or self.__dict__.get("fsdp_plugin")
        cpu_types = (DistributedType.MULTI_CPU, DistributedType.FSDP)
        if plugin is None or self.distributed_type not in cpu_types or self.device.type != "cpu":
            return
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin
        # accelerate names the CPU "cpu:<index>", which FSDP1 (``device_id=accelerator.device``)
        # rejects as inconsistent with torch's own "cpu"
        self.device = cpu
        # As accelerate does for the types it supports, so a re-initialised state keeps them.
        module.PartialState._shared_state.update(distributed_type=DistributedType.FSDP, device=cpu)

    module.AcceleratorState.__init__ = init_with_fsdp_on_cpu


def _patch_accelerator(module: Any) -> None:
    """FSDP2's full state dict gathered without "offload to CPU" when the device is the CPU:
    there is nothing to offload to, and the offloaded tensors alias storage that is invalid by
    the time safetensors writes them. The same gather as accelerate's ``get_state_dict``, less
    the offload. (FSDP1's full state dict on CPU segfaults inside torch, in the optimiser's as
    well: the FSDP1 tests use SHARDED_STATE_DICT.)"""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    get_state_dict = module.Accelerator.get_state_dict

    def get_state_dict_on_cpu(self: Any, model: Any, unwrap: bool = True) -> Any:
        if not self.is_fsdp2 or self.device.type != "cpu":
            return get_state_dict(self, model, unwrap)
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))

    module.Accelerator.get_state_dict = get_state_dict_on_cpu


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Runs each patch right after its module has been executed (so starting Python imports
    nothing)."""

    patches: ClassVar[dict[str, Callable[[Any], None]]] = {
        "accelerate.state": _patch_state,
        "accelerate.accelerator": _patch_accelerator,
    }

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        patch = self.patches.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                exec_module = spec.loader.exec_module

                def exec_and_patch(module: Any, _exec: Any = exec_module, _patch: Any = patch) -> None:
                    _exec(module)
                    _patch(module)

                spec.loader.exec_module = exec_and_patch
                return spec
        return None


sys.meta_path.insert(0, _PatchAfterImport())
