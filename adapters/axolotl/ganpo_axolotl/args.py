"""The ``ganpo:`` block, merged into Axolotl's config model (``get_input_args``): a bad value, or a
setting the core's host rules refuse for the TRL trainer Axolotl will build, stops ``axolotl train``
at config validation, before any model or dataset loads, with a message naming the key. The block is
parsed here, once; the plugin attaches that parsed config (Axolotl's ``cfg`` holds only its dump)."""

from __future__ import annotations

from typing import Any

from ganpo_trl.facts import facts_from_args
from ganpo_trl.grpo import online_rl_problems
from pydantic import BaseModel, Field, model_validator

from ganpo_plugins.adapter_kit import HostFacts, RegularizerBlock, check_host, parse_config

from .plugin import active_plugin, ganpo_enabled

__all__ = ["GANPOArgs", "facts_from_cfg"]

SUPPORTED_RL = ("dpo", "ipo", "simpo", "grpo")
# The DPOConfig arguments Axolotl sets for rl: dpo / ipo, each from its key ``dpo_<name>`` (for simpo,
# CPOConfig's simpo_gamma and cpo_alpha, named as TRL names them); Axolotl's keys of the other facts.
DPO_KEYS = {name: f"dpo_{name}" for name in
            ("loss_type", "loss_weights", "use_liger_kernel", "use_weighting", "label_smoothing")}  # fmt: skip
FACT_KEYS = {"sequence_parallel": "context_parallel_size", "meta_reference": "fsdp_config.cpu_ram_efficient_loading",
             "sharded_precompute": "precompute_ref_log_probs"}  # fmt: skip


class GANPOArgs(BaseModel):
    """Adds ``ganpo:`` to Axolotl's config (absent: the defaults, GANPO as in the paper)."""

    ganpo: RegularizerBlock = Field(None, description="latent regularizer added to the DPO/IPO/SimPO/GRPO loss")

    @model_validator(mode="after")
    def _fits_axolotl(self) -> GANPOArgs:
        cfg = self.__dict__  # Axolotl's whole config model: this class is one of its bases
        if not ganpo_enabled(cfg):
            return self  # loaded by entry point in a run that does not ask for GANPO: inert
        rl = getattr(cfg.get("rl"), "value", cfg.get("rl"))  # Axolotl's RLType compares by value
        if rl not in SUPPORTED_RL:
            raise ValueError(f"ganpo plugin: rl={rl!r}: the ganpo plugin supports rl: {', '.join(SUPPORTED_RL)}")
        config = self.ganpo if self.ganpo is not None else parse_config(None)  # no block: the defaults
        if rl == "grpo":  # TRL's GRPOTrainer: sides by advantage sign, no preference loss
            problems = online_rl_problems(config)
            if (cfg.get("context_parallel_size") or 1) > 1:
                problems.append(
                    f"context_parallel_size={cfg.get('context_parallel_size')} (> 1) splits every sequence's hidden "
                    "states over ranks, but the regularizer needs whole sequences; set context_parallel_size: 1"
                )
            if problems:
                raise ValueError("ganpo plugin: " + "; ".join(problems))
        else:
            try:
                check_host(facts_from_cfg(cfg, rl), config)
            except ValueError as exc:
                raise ValueError(f"ganpo plugin: {exc}") from None
        plugin = active_plugin()
        if plugin is not None:  # the parsed block travels to the attach as it is: parsed once
            plugin.validated(config)
        return self


def facts_from_cfg(cfg: dict[str, Any], rl: str) -> HostFacts:
    """The facts of the TRL trainer Axolotl builds from ``cfg`` for ``rl``, named by Axolotl's keys."""
    fsdp = cfg.get("fsdp_config")
    fsdp = fsdp.model_dump() if isinstance(fsdp, BaseModel) else dict(fsdp or {})
    sharded = bool(fsdp or cfg.get("fsdp"))
    fsdp2 = sharded and str(cfg.get("fsdp_version") or fsdp.get("fsdp_version") or 1) == "2"  # Axolotl's default: 1
    reference_loaded = not cfg.get("adapter") or bool(cfg.get("rl_adapter_ref_model"))
    packing = "dpo_padding_free" if cfg.get("dpo_padding_free") else "sample_packing"
    if rl == "simpo":  # an unset cpo_alpha is left to TRL, whose default (1.0) adds CPO's NLL term
        alpha = cfg.get("cpo_alpha")
        args = {"simpo_gamma": cfg.get("simpo_gamma"), "cpo_alpha": 1.0 if alpha is None else alpha}
    else:
        args = {trl: cfg.get(key) for trl, key in DPO_KEYS.items() if cfg.get(key) is not None}
    args["padding_free"] = bool(cfg.get(packing))
    if rl != "dpo":
        args["loss_type"] = rl
    return facts_from_args(
        "cpo" if rl == "simpo" else "dpo", args, style="yaml",
        keys={**DPO_KEYS, **FACT_KEYS, "packing": packing, **({"loss_types": "rl"} if rl != "dpo" else {})},
        sequence_parallel=cfg.get("context_parallel_size") or 1,
        sharded_precompute=fsdp2 and bool(cfg.get("precompute_ref_log_probs")) and reference_loaded,
        # For SimPO the adapter runs the second model Axolotl loads as the reference: without
        # weights on ranks > 0 under cpu_ram_efficient_loading.
        meta_reference=rl == "simpo" and sharded and bool(fsdp.get("cpu_ram_efficient_loading")),
    )  # fmt: skip
