"""Which TRL trainers the adapter claims, by class name (TRL is never imported to tell)."""

from __future__ import annotations

from typing import Any

from ganpo_plugins.adapter_kit import host_class

__all__ = ["KINDS", "trainer_kind"]

KINDS = {"DPOTrainer": "dpo", "CPOTrainer": "cpo", "OnlineDPOTrainer": "online_dpo", "GRPOTrainer": "grpo",
         "RLOOTrainer": "rloo"}  # fmt: skip
# Hosts whose trainers subclass TRL's but own their loss path, with an adapter of their own that
# claims them (LLaMA-Factory's CustomDPOTrainer, built on an older TRL): this adapter declines them.
OWN_ADAPTER = ("llamafactory.",)


def trainer_kind(trainer: Any) -> str | None:
    """``dpo``, ``cpo``, ``online_dpo``, ``grpo`` or ``rloo`` for TRL's trainers and their subclasses, else
    ``None``."""
    if any(cls.__module__.startswith(OWN_ADAPTER) for cls in type(trainer).__mro__):
        return None
    name = host_class(trainer, "trl.", KINDS)
    return None if name is None else KINDS[name]
