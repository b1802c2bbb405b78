"""The TRL host adapter as a ganpo_plugins plugin (entry point ``trl`` in the group
``ganpo_plugins.hosts``): claims TRL's ``DPOTrainer``, ``CPOTrainer``, ``OnlineDPOTrainer``,
``GRPOTrainer`` and ``RLOOTrainer`` and their subclasses (Axolotl's among them) for
:func:`ganpo_plugins.attach`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ganpo_plugins import hookimpl
from ganpo_plugins.hosts import host_class

KINDS = {"DPOTrainer": "dpo", "CPOTrainer": "cpo", "OnlineDPOTrainer": "online_dpo", "GRPOTrainer": "grpo",
         "RLOOTrainer": "rloo"}  # fmt: skip


def trainer_kind(trainer: Any) -> str | None:
    """``dpo``, ``cpo``, ``online_dpo``, ``grpo`` or ``rloo`` for TRL's trainers and their subclasses, else ``None``."""
    name = host_class(trainer, "trl.", KINDS)
    return None if name is None else KINDS[name]


@hookimpl
def ganpo_attach(trainer: Any, config: Any, options: Mapping[str, Any]) -> Any | None:
    if trainer_kind(trainer) is None:
        return None
    from .attach import attach_regularizer

    return attach_regularizer(trainer, config, **options)
