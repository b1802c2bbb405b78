"""The OpenRLHF host adapter as a ganpo_plugins plugin (entry point ``openrlhf`` in the group
``ganpo_plugins.hosts``): claims OpenRLHF's ``DPOTrainer`` (and subclasses) for
:func:`ganpo_plugins.attach`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ganpo_plugins.adapter_kit import hookimpl, host_class


@hookimpl
def ganpo_attach(trainer: Any, config: Any, options: Mapping[str, Any]) -> Any | None:
    if host_class(trainer, "openrlhf.trainer.dpo_trainer", ("DPOTrainer",)) is None:
        return None
    if options:
        raise TypeError(f"the OpenRLHF adapter takes no options, got {sorted(options)}")
    from .dpo import OpenRLHFAttachment

    return OpenRLHFAttachment(trainer, config)
