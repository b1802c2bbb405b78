"""The LLaMA-Factory host adapter as a ganpo_plugins plugin (entry point ``llamafactory`` in the group
``ganpo_plugins.hosts``): claims LLaMA-Factory's ``CustomDPOTrainer`` and its subclasses for
:func:`ganpo_plugins.attach`. It answers before the TRL adapter (``tryfirst``): the trainer subclasses
TRL's ``DPOTrainer``, but LLaMA-Factory owns its loss path (and pins a TRL below the TRL adapter's range)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ganpo_plugins.adapter_kit import hookimpl, host_class


def is_dpo_trainer(trainer: Any) -> bool:
    """LLaMA-Factory's ``CustomDPOTrainer`` or a subclass (by name: nothing is imported)."""
    return host_class(trainer, "llamafactory.", ("CustomDPOTrainer",)) is not None


@hookimpl(tryfirst=True)
def ganpo_attach(trainer: Any, config: Any, options: Mapping[str, Any]) -> Any | None:
    if not is_dpo_trainer(trainer):
        return None
    from .attach import LlamaFactoryDPOAttachment

    return LlamaFactoryDPOAttachment(trainer, config, **options)
