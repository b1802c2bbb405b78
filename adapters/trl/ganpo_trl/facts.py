"""The facts of a TRL trainer that the core's host rules (:func:`ganpo_plugins.host_rules.check_host`)
judge, read from its public arguments (``trainer.args``), which keep their names across releases."""

from __future__ import annotations

from typing import Any

from ganpo_plugins.host_rules import HostFacts

__all__ = ["EQUIVALENTS", "facts_from_trainer"]

# GPO kinds a TRL trainer computes with exactly the same formula (docs/methods.md): DPO's
# ``sigmoid`` / ``hinge`` are ``log(1 + e^(−βρ))`` / ``max(0, 1 − βρ)`` on summed log-probabilities;
# CPO's ``simpo`` is plain SimPO when label smoothing, ``alpha`` and ``cpo_alpha`` are 0 (modifiers).
EQUIVALENTS: dict[str, dict[str, str]] = {
    "dpo": {"logistic": "sigmoid", "hinge": "hinge"},
    "cpo": {"simpo": "simpo"},
    "online_dpo": {"logistic": "sigmoid"},
}


def facts_from_trainer(trainer: Any, kind: str) -> HostFacts:
    """``kind``: ``dpo`` (``DPOTrainer``), ``cpo`` (``CPOTrainer``) or ``online_dpo``."""
    args = trainer.args
    keys = {"loss_types": "loss_type", "fused_loss": "use_liger_kernel", "packing": "padding_free"}
    common: dict[str, Any] = {"style": "args", "keys": {**keys, "router_aux_loss": "router_aux_loss_coef"}}
    common["equivalents"] = EQUIVALENTS[kind]
    if kind == "cpo":
        modifiers = {
            "label_smoothing": (args.label_smoothing, 0.0),
            "alpha": (args.alpha, 0.0),  # AlphaPO's reward shape
            "cpo_alpha": (args.cpo_alpha, 0.0),  # CPO's NLL term, added to the loss
        }
        encoder_decoder = bool(getattr(args, "is_encoder_decoder", False))
        return HostFacts(**common, reference_free=True, loss_types=(args.loss_type,), simpo_gamma=args.simpo_gamma,
                         loss_modifiers=modifiers, encoder_decoder=encoder_decoder)  # fmt: skip
    if kind == "online_dpo":
        return HostFacts(**common, loss_types=(args.loss_type,))
    divergence = str(getattr(args.f_divergence_type, "value", args.f_divergence_type))
    return HostFacts(
        **common,
        loss_types=tuple(trainer.loss_types),  # the trainer's own copy (the adapter may set it)
        loss_weights=tuple(trainer.loss_weights),
        loss_modifiers={
            "f_divergence_type": (divergence, "reverse_kl"),
            "use_weighting": (bool(args.use_weighting), False),
            "ld_alpha": (args.ld_alpha, None),
            "label_smoothing": (args.label_smoothing, 0.0),
        },
        router_aux_loss=bool(getattr(trainer, "aux_loss_enabled", False)),
        packing=bool(getattr(trainer, "padding_free", args.padding_free)),  # a trainer may switch it off
        fused_loss=bool(args.use_liger_kernel),
        vision=bool(getattr(trainer, "_is_vision_dataset", False)),
    )
