"""Test-only: let accelerate take its FSDP path on CPU (on PYTHONPATH of the FSDP tests' torchrun
workers only; never part of the package).

accelerate turns a run's FSDP plugin on only for accelerator distributed types (MULTI_GPU,
MULTI_NPU, ...), never for MULTI_CPU: on a CPU machine a run configured for FSDP silently
trains under DDP (DESIGN.md, "FSDP on CPU"). Right after ``accelerate.state`` is imported, this
wraps ``AcceleratorState.__init__`` so that a MULTI_CPU state given an FSDP plugin becomes an
FSDP state holding it on the device ``cpu``, as it would on GPUs. One more replacement, of host
code: ``Accelerator.get_state_dict`` under FSDP2 (:func:`_patch_accelerator`, which says why), so
the FSDP2 FULL_STATE_DICT model save these tests check is this shim's gather, not accelerate's.
Everything else is accelerate's, TRL's and torch's own FSDP code over gloo, the SHARDED_STATE_DICT
checkpoints (accelerate's ``save_fsdp_model`` / ``load_fsdp_model``) included.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parents[2]))  # tests/, last: it shadows nothing
from patch_after_import import install


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
    """Replaces accelerate's code (tested: this gather, not accelerate's FSDP2 full-state-dict save).
    FSDP2's full state dict gathered without "offload to CPU" when the device is the CPU:
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


install({"accelerate.state": _patch_state, "accelerate.accelerator": _patch_accelerator})
