"""The facts of a TRL trainer that the core's host rules (:func:`ganpo_plugins.adapter_kit.rules.check_host`)
judge, from TRL's training arguments by their public names (they keep across releases): off a live
trainer, or off the config of a host that builds one (Axolotl)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ganpo_plugins.adapter_kit import HostFacts

__all__ = ["facts_from_args", "facts_from_trainer"]

# GPO kinds a TRL trainer computes with exactly the same formula (docs/methods.md): DPO's
# ``sigmoid`` / ``hinge`` are ``log(1 + e^(−βρ))`` / ``max(0, 1 − βρ)`` on summed log-probabilities;
# CPO's ``simpo`` is plain SimPO when its modifiers are neutral.
EQUIVALENTS = {
    "dpo": {"logistic": "sigmoid", "hinge": "hinge"},
    "cpo": {"simpo": "simpo"},
    "online_dpo": {"logistic": "sigmoid"},
}
# The arguments that change the base loss or its log-probabilities, with the value that leaves the
# plain formula (CPO: ``alpha`` is AlphaPO's reward shape, ``cpo_alpha`` an NLL term added to the loss).
MODIFIERS: dict[str, dict[str, Any]] = {
    "dpo": {"f_divergence_type": "reverse_kl", "use_weighting": False, "ld_alpha": None, "label_smoothing": 0.0},
    "cpo": {"label_smoothing": 0.0, "alpha": 0.0, "cpo_alpha": 0.0},
    "online_dpo": {},
}


def facts_from_args(
    kind: str, args: Mapping[str, Any], *, style: str = "args", keys: Mapping[str, str] | None = None, **facts: Any
) -> HostFacts:
    """The facts of a TRL trainer of ``kind`` (``dpo``, ``cpo``, ``online_dpo``) built with ``args``
    (TRL's argument names; a missing one has its neutral value). ``keys``: the user's name of a TRL
    argument or of a fact, where it is not TRL's; ``facts``: those that are no training argument."""
    keys = dict(keys or {})
    trl_names = {"loss_types": "loss_type", "fused_loss": "use_liger_kernel", "packing": "padding_free",
                 "router_aux_loss": "router_aux_loss_coef"}  # fmt: skip
    named = {fact: keys.get(arg, arg) for fact, arg in trl_names.items()}
    loss_type, weights = args.get("loss_type") or "sigmoid", args.get("loss_weights")
    modifiers = {name: (args.get(name, neutral), neutral) for name, neutral in MODIFIERS[kind].items()}
    if "f_divergence_type" in modifiers:  # an enum in TRL
        value = modifiers["f_divergence_type"][0]
        modifiers["f_divergence_type"] = (str(getattr(value, "value", value)), "reverse_kl")
    return HostFacts(
        style=style, keys={**named, **keys}, equivalents=EQUIVALENTS[kind], reference_free=kind == "cpo",
        loss_types=(loss_type,) if isinstance(loss_type, str) else tuple(loss_type),
        loss_weights=None if weights is None else tuple(weights), loss_modifiers=modifiers,
        simpo_gamma=args.get("simpo_gamma") if kind == "cpo" else None,
        fused_loss=kind == "dpo" and bool(args.get("use_liger_kernel")),  # TRL's Liger DPO loss
        packing=bool(args.get("padding_free")), **facts,
    )  # fmt: skip


def facts_from_trainer(trainer: Any, kind: str) -> HostFacts:
    """``kind``: ``dpo`` (``DPOTrainer``), ``cpo`` (``CPOTrainer``) or ``online_dpo``."""
    args = dict(vars(trainer.args))
    if kind == "online_dpo":
        return facts_from_args(kind, {"loss_type": args["loss_type"]})  # no other argument changes its loss
    if kind == "cpo":
        return facts_from_args(kind, args, encoder_decoder=bool(args.get("is_encoder_decoder")))
    # The trainer's own copies: the adapter may set its loss types, a trainer may switch padding-free off.
    args.update(loss_type=trainer.loss_types, loss_weights=trainer.loss_weights)
    args["padding_free"] = getattr(trainer, "padding_free", args["padding_free"])
    return facts_from_args(
        kind, args, router_aux_loss=bool(getattr(trainer, "aux_loss_enabled", False)),
        vision=bool(getattr(trainer, "_is_vision_dataset", False)),
    )  # fmt: skip
