"""The TRL host adapter as a ganpo_plugins plugin (entry point ``trl`` in the group
``ganpo_plugins.hosts``): claims TRL's ``DPOTrainer``, ``CPOTrainer`` and ``OnlineDPOTrainer``
and their subclasses (Axolotl's among them) for :func:`ganpo_plugins.attach`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ganpo_plugins import hookimpl

_CLAIMED = ("DPOTrainer", "CPOTrainer", "OnlineDPOTrainer")


def _is_trl_preference_trainer(trainer: Any) -> bool:
    # Decided from the class hierarchy's module names, so a process without TRL never imports it.
    return any(cls.__module__.startswith("trl.") and cls.__name__ in _CLAIMED for cls in type(trainer).__mro__)


@hookimpl
def ganpo_attach(trainer: Any, config: Any, options: Mapping[str, Any]) -> Any | None:
    if not _is_trl_preference_trainer(trainer):
        return None
    from .attach import attach_regularizer

    return attach_regularizer(trainer, config, **options)
