"""The facts of a LLaMA-Factory run that decide whether the ``ganpo:`` block can be served, read off
LLaMA-Factory's own parsed arguments (``get_train_args``) before any model or dataset loads, and
judged by the core's host rules (:func:`ganpo_plugins.adapter_kit.check_host`) plus the rules of
this host: which stage, ``pref_loss`` and ``finetuning_type`` the adapter serves.
Names are LLaMA-Factory's YAML keys, so every message names the key the user wrote."""

from __future__ import annotations

from typing import Any

from ganpo_plugins.adapter_kit import BaseLoss, HostFacts, RegularizerConfig, check_host

__all__ = [
    "REFERENCE_FREE",
    "SERVED_FINETUNING",
    "TRAINED_AS_SIGMOID",
    "check_dpo_run",
    "check_rm_run",
    "facts_from_args",
]

#: The other ``pref_loss`` values (the adapter serves ``sigmoid``, ``simpo``, ``orpo``): LLaMA-Factory 0.9.5
#: accepts them but trains them as sigmoid DPO (its
#: ``compute_preference_loss`` calls TRL 0.24's ``dpo_loss`` without a loss type, whose default is
#: ``"sigmoid"``; measured: the logged loss at margin 0 is log 2, not hinge's 1 or IPO's 1/(2β)²), with the fix.
TRAINED_AS_SIGMOID = {
    "hinge": "for hinge set pref_loss: sigmoid and ganpo.preference_loss: hinge (computed by the package)",
    "ipo": "for an IPO-shaped loss set pref_loss: sigmoid and ganpo.preference_loss: squared (the GPO squared "
    "loss, on summed log-ratios)",
    "kto_pair": "for KTO use stage: kto, which the ganpo block does not serve",
}
REFERENCE_FREE = ("simpo", "orpo")  # LLaMA-Factory loads and runs no reference model for these
SERVED_FINETUNING = ("full", "freeze", "lora")
# The GPO kind LLaMA-Factory computes with exactly the same formula: its (TRL's) ``sigmoid`` is
# ``log(1 + e^(−βρ))`` on summed log-probabilities (docs/methods.md).
EQUIVALENTS = {"logistic": "sigmoid"}
# The settings that change LLaMA-Factory's DPO loss or its log-probabilities, with their neutral values.
MODIFIERS = {"pref_ftx": 0.0, "pref_bco_weight": 0.0, "dpo_label_smoothing": 0.0, "ld_alpha": None}


def outside_this_process(finetuning_args: Any) -> list[str]:
    """The keys that run LLaMA-Factory's workflow elsewhere (Megatron, Ray workers), where this
    process's trainer and what the adapter serves in it never run."""
    return [
        f"{key}: true runs LLaMA-Factory's {finetuning_args.stage} workflow outside this process's trainer, "
        f"where the block is not served; set {key}: false"
        for key in ("use_mca", "use_ray")
        if getattr(finetuning_args, key, False)
    ]


def facts_from_args(finetuning_args: Any) -> HostFacts:
    """The facts of the ``stage: dpo`` trainer LLaMA-Factory builds from these arguments. Packing
    and sequence parallelism are no facts here: LLaMA-Factory 0.9.5 packs only ``pt``/``sft`` data
    (its ``packing`` key leaves pairwise data as it is) and has no sequence parallelism."""
    pref_loss = finetuning_args.pref_loss
    reference_free = pref_loss in REFERENCE_FREE
    modifiers = {name: (getattr(finetuning_args, name), neutral) for name, neutral in MODIFIERS.items()}
    return HostFacts(
        style="yaml",
        keys={"loss_types": "pref_loss", "simpo_gamma": "simpo_gamma"},
        reference_free=reference_free,
        loss_types=(pref_loss,),
        equivalents={"simpo": "simpo"} if reference_free else EQUIVALENTS,
        simpo_gamma=finetuning_args.simpo_gamma if reference_free else None,
        loss_modifiers=modifiers,
    )


def check_dpo_run(config: RegularizerConfig, finetuning_args: Any) -> BaseLoss:
    """Who computes the base loss of this ``stage: dpo`` run; one ``ValueError`` naming every key
    the adapter cannot serve, each with its fix."""
    problems = []
    pref_loss = finetuning_args.pref_loss
    if pref_loss in TRAINED_AS_SIGMOID:
        problems.append(
            f"pref_loss: {pref_loss}: LLaMA-Factory 0.9.5 trains it as sigmoid DPO (it calls TRL 0.24's dpo_loss "
            f"without the loss type, which then defaults to sigmoid), so the run would not train what it says; "
            f"{TRAINED_AS_SIGMOID[pref_loss]}"
        )
    if finetuning_args.finetuning_type not in SERVED_FINETUNING:
        problems.append(
            f"finetuning_type: {finetuning_args.finetuning_type}: the ganpo block serves finetuning_type "
            f"{', '.join(SERVED_FINETUNING)}; set one of them or remove the ganpo block"
        )
    problems += outside_this_process(finetuning_args)
    try:
        base = check_host(facts_from_args(finetuning_args), config)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))
    return base


def check_rm_run(finetuning_args: Any) -> None:
    """One ``ValueError`` naming every key of a run the ``apo:`` block (the APO reward-model loss)
    cannot be served in: it serves ``stage: rm``, LLaMA-Factory's reward-model stage, in this process."""
    problems = []
    if finetuning_args.stage != "rm":
        problems.append(
            f"stage: {finetuning_args.stage}: the apo block trains a reward model with the APO loss, in stage: rm; "
            "set stage: rm or remove the apo block"
        )
    problems += outside_this_process(finetuning_args)
    if problems:
        raise ValueError("; ".join(problems))
