"""The OpenRLHF host adapter as a ganpo_plugins plugin (entry point ``openrlhf`` in the group
``ganpo_plugins.hosts``): claims OpenRLHF's ``DPOTrainer`` (and subclasses) for
:func:`ganpo_plugins.attach`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ganpo_plugins import hookimpl


def _is_openrlhf_dpo_trainer(trainer: Any) -> bool:
    # Decided from the class hierarchy's module names, so a process without OpenRLHF never imports it.
    return any(
        cls.__module__ == "openrlhf.trainer.dpo_trainer" and cls.__name__ == "DPOTrainer"
        for cls in type(trainer).__mro__
    )


@hookimpl
def ganpo_attach(trainer: Any, config: Any, options: Mapping[str, Any]) -> Any | None:
    if not _is_openrlhf_dpo_trainer(trainer):
        return None
    if options:
        raise TypeError(f"the OpenRLHF adapter takes no options, got {sorted(options)}")
    from .dpo import OpenRLHFAttachment

    return OpenRLHFAttachment(trainer, config)
