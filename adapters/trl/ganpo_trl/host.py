"""The TRL host adapter as a ganpo_plugins plugin (entry point ``trl`` in the group
``ganpo_plugins.hosts``): claims TRL's ``DPOTrainer``, ``CPOTrainer`` and ``OnlineDPOTrainer``
and their subclasses (Axolotl's among them) for :func:`ganpo_plugins.attach`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ganpo_plugins import hookimpl

KINDS = {"DPOTrainer": "dpo", "CPOTrainer": "cpo", "OnlineDPOTrainer": "online_dpo"}


def trainer_kind(trainer: Any) -> str | None:
    """``dpo``, ``cpo`` or ``online_dpo`` for TRL's trainers and their subclasses, else ``None``
    (decided from the class hierarchy's module names, so a process without TRL never imports it)."""
    for cls in type(trainer).__mro__:
        if cls.__module__.startswith("trl.") and cls.__name__ in KINDS:
            return KINDS[cls.__name__]
    return None


@hookimpl
def ganpo_attach(trainer: Any, config: Any, options: Mapping[str, Any]) -> Any | None:
    if trainer_kind(trainer) is None:
        return None
    from .attach import attach_regularizer

    return attach_regularizer(trainer, config, **options)
