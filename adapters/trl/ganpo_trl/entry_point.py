"""The TRL host adapter as a ganpo_plugins plugin (entry point ``trl`` in the group
``ganpo_plugins.hosts``): claims TRL's ``DPOTrainer``, ``CPOTrainer``, ``OnlineDPOTrainer``,
``GRPOTrainer`` and ``RLOOTrainer`` and their subclasses (Axolotl's among them) for
:func:`ganpo_plugins.attach`. The adapter's own
code never comes through here: it calls :func:`~ganpo_trl.attach.attach_regularizer` directly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ganpo_plugins.adapter_kit import hookimpl

from .kinds import trainer_kind


@hookimpl
def ganpo_attach(trainer: Any, config: Any, options: Mapping[str, Any]) -> Any | None:
    if trainer_kind(trainer) is None:
        return None
    from .attach import attach_regularizer  # imports transformers: only once a TRL trainer is claimed

    return attach_regularizer(trainer, config, **options)
