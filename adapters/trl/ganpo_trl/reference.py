"""The adapter's own reference forward in a TRL trainer: final hidden states of the frozen
reference under no-grad, at the precision of the trainer's own forwards."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ganpo_plugins.adapter_kit import reference_forward

__all__ = ["reference_hidden"]


def reference_hidden(trainer: Any, reference: Any, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """``[B, T, H]`` of ``reference`` on ``input_ids``; ``reference`` ``None``: the trainer's PEFT
    policy with its adapter disabled (TRL's ``ref`` adapter where it trains one), gradient
    checkpointing off for the pass."""
    autocast = trainer.accelerator.autocast()  # the precision of the host's own forwards
    if reference is not None:
        with autocast:
            return reference_forward(reference, input_ids, attention_mask)
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import use_adapter

    root = trainer.model  # under FSDP the sharded root; the adapter switches on the PEFT model inside
    model = trainer.accelerator.unwrap_model(root)
    adapter = "ref" if "ref" in model.peft_config else None  # TRL's convention for a re-trained adapter
    gc_kwargs = trainer.args.gradient_checkpointing_kwargs
    with autocast, use_adapter(model, adapter), disable_gradient_checkpointing(model, gc_kwargs):
        return reference_forward(root, input_ids, attention_mask)
