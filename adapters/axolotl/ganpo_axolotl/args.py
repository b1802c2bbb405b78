"""The ``ganpo:`` block of an Axolotl config, validated with the rest of the config.

Axolotl merges this model into its own config model (``get_input_args``), so a bad value stops
``axolotl train`` at config validation, before any model or dataset loads, with a message naming
the key. The model validator reports the facts of the TRL trainer Axolotl will build, in
Axolotl's spelling, to the core's host rules (:func:`ganpo_plugins.host_rules.check_host`).
"""

from __future__ import annotations

from typing import Any

from ganpo_trl.facts import EQUIVALENTS
from pydantic import BaseModel, Field, model_validator

from ganpo_plugins import parse_config
from ganpo_plugins.config import RegularizerBlock
from ganpo_plugins.host_rules import HostFacts, check_host

from .plugin import ganpo_enabled

__all__ = ["GANPOArgs", "facts_from_cfg"]

SUPPORTED_RL = ("dpo", "ipo", "simpo")


class GANPOArgs(BaseModel):
    """Adds ``ganpo:`` to Axolotl's config (absent: the defaults, GANPO as in the paper)."""

    ganpo: RegularizerBlock = Field(None, description="latent regularizer added to the DPO/IPO/SimPO loss")

    @model_validator(mode="after")
    def _fits_axolotl(self) -> GANPOArgs:
        cfg = self.__dict__  # Axolotl's whole config model: this class is one of its bases
        if not ganpo_enabled(cfg):
            return self  # loaded by entry point in a run that does not ask for GANPO: inert
        rl = getattr(cfg.get("rl"), "value", cfg.get("rl"))  # Axolotl's RLType compares by value
        if rl not in SUPPORTED_RL:
            raise ValueError(f"ganpo plugin: rl={rl!r}: the ganpo plugin supports rl: {', '.join(SUPPORTED_RL)}")
        try:
            check_host(facts_from_cfg(cfg, rl), self.ganpo or parse_config(None))
        except ValueError as exc:
            raise ValueError(f"ganpo plugin: {exc}") from None
        return self


def facts_from_cfg(cfg: dict[str, Any], rl: str) -> HostFacts:
    """The facts of the TRL trainer Axolotl builds from ``cfg`` (``rl``: dpo, ipo or simpo),
    named as Axolotl's keys."""
    fsdp = cfg.get("fsdp_config")
    fsdp = fsdp.model_dump() if isinstance(fsdp, BaseModel) else dict(fsdp or {})
    sharded = bool(fsdp or cfg.get("fsdp"))
    fsdp2 = sharded and str(cfg.get("fsdp_version") or fsdp.get("fsdp_version") or 1) == "2"  # Axolotl's default: 1
    reference_loaded = not cfg.get("adapter") or bool(cfg.get("rl_adapter_ref_model"))
    packing = "dpo_padding_free" if cfg.get("dpo_padding_free") else "sample_packing"
    keys = {
        "loss_types": "rl" if rl in ("ipo", "simpo") else "dpo_loss_type",
        "fused_loss": "dpo_use_liger_kernel",
        "packing": packing,
        "sequence_parallel": "context_parallel_size",
        "meta_reference": "fsdp_config.cpu_ram_efficient_loading",
        "sharded_precompute": "precompute_ref_log_probs",
    }
    common = {
        "packing": bool(cfg.get(packing)),
        "sequence_parallel": cfg.get("context_parallel_size") or 1,
        "sharded_precompute": fsdp2 and bool(cfg.get("precompute_ref_log_probs")) and reference_loaded,
    }
    if rl == "simpo":
        # The second model Axolotl loads for SimPO is the reference the adapter runs: without
        # weights on ranks > 0 under cpu_ram_efficient_loading. TRL's cpo_alpha default is 1.0.
        cpo_alpha = 1.0 if cfg.get("cpo_alpha") is None else cfg["cpo_alpha"]
        return HostFacts(
            style="yaml", keys=keys, reference_free=True, loss_types=("simpo",), equivalents=EQUIVALENTS["cpo"],
            simpo_gamma=cfg.get("simpo_gamma"), loss_modifiers={"cpo_alpha": (cpo_alpha, 0.0)},
            meta_reference=sharded and bool(fsdp.get("cpu_ram_efficient_loading")), **common,
        )  # fmt: skip
    weights = cfg.get("dpo_loss_weights")
    return HostFacts(
        style="yaml", keys={**keys, "use_weighting": "dpo_use_weighting", "label_smoothing": "dpo_label_smoothing"},
        loss_types=("ipo",) if rl == "ipo" else tuple(cfg.get("dpo_loss_type") or ("sigmoid",)),
        loss_weights=None if weights is None else tuple(weights), equivalents=EQUIVALENTS["dpo"],
        loss_modifiers={
            "use_weighting": (bool(cfg.get("dpo_use_weighting")), False),
            "label_smoothing": (cfg.get("dpo_label_smoothing") or 0.0, 0.0),
        },
        fused_loss=bool(cfg.get("dpo_use_liger_kernel")), **common,
    )  # fmt: skip
