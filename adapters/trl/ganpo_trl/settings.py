"""The TRL trainer settings a regularizer interacts with, and the rules between them.

One validated model, :class:`TRLSettings`, shared by the TRL adapter (built from a live
trainer) and the Axolotl plugin (built from an Axolotl config before any model loads). Its
messages name each setting the way the user wrote it: pass ``context={"names": {...}}`` to
map a TRL argument (``use_liger_kernel``) to its spelling in the user's config
(``dpo_use_liger_kernel``).

Base preference loss (``ganpo.preference_loss``):

- unset: the trainer's own loss, whatever it is (TRL DPO ``loss_type``, SimPO/CPO).
- ``logistic`` / ``hinge`` on a DPO trainer: TRL's ``sigmoid`` / ``hinge`` compute exactly
  ``log(1 + e^(−βρ))`` / ``max(0, 1 − βρ)`` on summed response log-probabilities, so TRL
  computes them (:attr:`BaseLoss.trl_loss_type`).
- ``simpo`` on a SimPO (CPO) trainer: TRL's ``loss_type="simpo"`` is exactly
  ``−log σ(β(mean logπ(y+) − mean logπ(y−)) − γ)`` when ``label_smoothing == 0`` and
  ``alpha == 0``, so TRL computes it.
- every other kind on a DPO trainer (``squared``, ``exponential``, ``truncated_quadratic``,
  ``savage``, ``simpo``, plugins' losses): computed by :mod:`ganpo_plugins.preference` from
  the log-probabilities the trainer itself computed.

``squared`` is docs/methods.md's ``(βρ − 1)²`` on summed log-probabilities. TRL's ``ipo``,
``(ρ̄ − 1/(2β))²`` on per-token-averaged log-ratios, is a different function of ``ρ`` and β,
so it is never substituted for ``squared``; it stays available as the host's own loss
(``loss_type=["ipo"]``, Axolotl ``rl: ipo``) with ``preference_loss`` unset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SerializeAsAny, ValidationInfo, model_validator

from ganpo_plugins import PreferenceLoss, RegularizerConfig
from ganpo_plugins.registry import resolve

__all__ = ["TRL_EQUIVALENTS", "BaseLoss", "TRLSettings"]

# GANPO preference losses that a TRL trainer computes with exactly the same formula.
TRL_EQUIVALENTS: dict[str, dict[str, str]] = {
    "dpo": {"logistic": "sigmoid", "hinge": "hinge"},
    "cpo": {"simpo": "simpo"},
}
_DPO_DEFAULT_LOSS = ("sigmoid",)


@dataclass(frozen=True)
class BaseLoss:
    """Who computes the base preference loss.

    ``trl_loss_type`` set: the trainer computes it with that loss type (the adapter sets it
    on the trainer when it differs). ``loss`` set: the adapter replaces the trainer's loss
    with ``loss`` evaluated on the trainer's own log-probabilities.
    """

    trl_loss_type: str | None = None
    loss: PreferenceLoss | None = None


class TRLSettings(BaseModel):
    """The trainer settings that decide whether and how a regularizer can attach."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trainer: Literal["dpo", "cpo"]
    ganpo: SerializeAsAny[RegularizerConfig]
    loss_type: tuple[str, ...] = _DPO_DEFAULT_LOSS
    loss_weights: tuple[float, ...] | None = None
    simpo_gamma: float | None = None
    label_smoothing: float = 0.0
    alpha: float = 0.0
    ld_alpha: float | None = None
    f_divergence_type: str = "reverse_kl"
    use_weighting: bool = False
    use_liger_kernel: bool = False
    padding_free: bool = False
    router_aux_loss: bool = False
    vision: bool = False
    is_encoder_decoder: bool = False

    @model_validator(mode="after")
    def _compatible(self, info: ValidationInfo) -> TRLSettings:
        names: dict[str, str] = (info.context or {}).get("names", {})
        problems = self.problems(names)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def problems(self, names: dict[str, str] | None = None) -> list[str]:
        """Every reason this combination cannot run, each naming the setting and the fix."""
        names = names or {}

        def n(key: str) -> str:
            return names.get(key, key)

        out: list[str] = []
        if self.use_liger_kernel:
            out.append(
                f"{n('use_liger_kernel')}=true: the Liger fused DPO loss never materialises the final hidden "
                f"states the regularizer reads; set {n('use_liger_kernel')}: false"
            )
        if self.padding_free:
            out.append(
                f"{n('padding_free')}=true: packed sequences have no per-pair hidden states; set "
                f"{n('padding_free')}: false"
            )
        if self.vision:
            out.append("vision datasets are not supported by the regularizer adapters yet; use a text-only dataset")
        if self.is_encoder_decoder:
            out.append("encoder-decoder models are not supported: the regularizer reads a decoder-only model's states")
        if self.trainer == "cpo" and self.loss_type == ("simpo",) and self.simpo_gamma is None:
            out.append(
                f"{n('loss_type')}=simpo needs SimPO's target margin γ, which is unset (TRL would fail dividing it by "
                f"β at the first step); set {n('simpo_gamma')}, e.g. {n('simpo_gamma')}: 0.5"
            )
        pref = self.ganpo.preference_loss
        if pref is None:
            return out
        if self.trainer == "cpo":
            if pref != "simpo":
                out.append(
                    f"ganpo.preference_loss={pref!r} needs reference log-probabilities, which a SimPO/CPO trainer "
                    "never computes; use a DPO trainer (Axolotl rl: dpo) for reference-based GPO losses, or "
                    "preference_loss: simpo"
                )
            if self.loss_type != ("simpo",):
                out.append(
                    f"ganpo.preference_loss='simpo' but the trainer's {n('loss_type')}={self.loss_type[0]!r}; "
                    f"set {n('loss_type')}: simpo or leave ganpo.preference_loss unset"
                )
            if self.label_smoothing or self.alpha:
                out.append(
                    f"ganpo.preference_loss='simpo' is the plain SimPO loss, but {n('label_smoothing')}="
                    f"{self.label_smoothing} and {n('alpha')}={self.alpha} change it; set both to 0 or leave "
                    "ganpo.preference_loss unset"
                )
            gamma = self.ganpo.simpo_gamma
            if gamma is not None and gamma != self.simpo_gamma:
                out.append(
                    f"ganpo.simpo_gamma={gamma} differs from the trainer's {n('simpo_gamma')}={self.simpo_gamma}; "
                    f"set the SimPO margin once, in {n('simpo_gamma')}"
                )
            return out
        mapped = TRL_EQUIVALENTS["dpo"].get(pref)
        if self.loss_type not in (_DPO_DEFAULT_LOSS, (mapped,)) or self.loss_weights not in (None, (1.0,)):
            out.append(
                f"ganpo.preference_loss={pref!r} and the trainer's {n('loss_type')}={list(self.loss_type)} both "
                f"choose the base loss; remove {n('loss_type')} (and {n('loss_weights')}) or "
                "ganpo.preference_loss"
            )
        if self.f_divergence_type != "reverse_kl":
            out.append(
                f"ganpo.preference_loss={pref!r} is defined on log-ratios, but {n('f_divergence_type')}="
                f"{self.f_divergence_type!r}; use reverse_kl or leave ganpo.preference_loss unset"
            )
        for key, value in (("use_weighting", self.use_weighting), ("ld_alpha", self.ld_alpha)):
            if value not in (None, False):
                out.append(
                    f"{n(key)}={value} changes the log-probabilities ganpo.preference_loss={pref!r} is defined on; "
                    f"unset {n(key)} or ganpo.preference_loss"
                )
        if mapped is None and self.router_aux_loss:
            out.append(
                f"ganpo.preference_loss={pref!r} replaces the trainer's loss, which here includes the MoE router "
                "auxiliary loss; set router_aux_loss_coef: 0 or leave ganpo.preference_loss unset"
            )
        if pref == "simpo" and self.ganpo.simpo_gamma is None:
            out.append("ganpo.preference_loss='simpo' on a DPO trainer needs the margin: set ganpo.simpo_gamma")
        return out

    def base_loss(self) -> BaseLoss:
        """Who computes the base preference loss (see the module docstring)."""
        pref = self.ganpo.preference_loss
        if pref is None:
            return BaseLoss()
        mapped = TRL_EQUIVALENTS[self.trainer].get(pref)
        if mapped is not None:
            return BaseLoss(trl_loss_type=mapped)
        return BaseLoss(loss=resolve("preference_loss", pref))

    @classmethod
    def from_trainer(cls, trainer: Any, config: RegularizerConfig) -> TRLSettings:
        """Read the settings off a live DPOTrainer or CPOTrainer (raises ValueError on conflicts).

        Everything comes from the trainer's public arguments (``trainer.args``), which keep their
        names across TRL releases; ``loss_types``/``loss_weights`` are the trainer's own copies
        (the adapter may set them), and a trainer that switched padding-free off says so."""
        args = trainer.args
        if _is_cpo(trainer):
            fields: dict[str, Any] = {
                "trainer": "cpo",
                "loss_type": (args.loss_type,),
                "simpo_gamma": args.simpo_gamma,
                "label_smoothing": args.label_smoothing,
                "alpha": args.alpha,
                "is_encoder_decoder": bool(getattr(args, "is_encoder_decoder", False)),
            }
        else:
            fields = {
                "trainer": "dpo",
                "loss_type": tuple(trainer.loss_types),
                "loss_weights": tuple(trainer.loss_weights),
                "ld_alpha": args.ld_alpha,
                "f_divergence_type": str(getattr(args.f_divergence_type, "value", args.f_divergence_type)),
                "use_weighting": bool(args.use_weighting),
                "use_liger_kernel": bool(args.use_liger_kernel),
                "padding_free": bool(getattr(trainer, "padding_free", args.padding_free)),
                "router_aux_loss": bool(getattr(trainer, "aux_loss_enabled", False)),
                "vision": bool(getattr(trainer, "_is_vision_dataset", False)),
            }
        return cls.model_validate({**fields, "ganpo": config})


def _is_cpo(trainer: Any) -> bool:
    from trl.experimental.cpo import CPOTrainer

    return isinstance(trainer, CPOTrainer)
