"""``--ganpo.*`` / ``--apo.*`` command-line flags for the OpenRLHF launchers, and the checks of
how they fit OpenRLHF's own flags.

Flags follow OpenRLHF 0.11's style: dotted names (``--ganpo.discriminator.d_model 256``),
one value per flag (two for ``betas``, like ``--adam.betas``), switches for booleans
(``--ganpo.save_every_rank`` on, ``--ganpo.discriminator.no_spectral_norm`` off). Values stay
strings here; the pydantic models convert and validate them, so every error names the flag.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, SerializeAsAny, model_validator

from ganpo_plugins import RegularizerConfig
from ganpo_plugins.apo import APOSettings

__all__ = ["DPOHostCheck", "RMHostCheck"]


class DPOHostCheck(BaseModel):
    """How ``--ganpo.*`` fits ``openrlhf.cli.train_dpo``'s own flags (checked before any model loads)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    packing_samples: bool
    ring_attn_size: int
    ipo_enable: bool
    label_smoothing: float
    ganpo: SerializeAsAny[RegularizerConfig]

    @classmethod
    def from_args(cls, args: Any) -> DPOHostCheck:
        return cls(
            packing_samples=args.ds.packing_samples,
            ring_attn_size=args.ds.ring_attn_size,
            ipo_enable=args.model.ipo_enable,
            label_smoothing=args.model.label_smoothing,
            ganpo=args.ganpo,
        )

    @model_validator(mode="after")
    def _fits(self) -> DPOHostCheck:
        problems = []
        if self.ring_attn_size > 1:
            problems.append(
                f"--ds.ring_attn_size: sequence parallelism splits every sequence's hidden states over ranks, but "
                f"the discriminators need whole sequences (got {self.ring_attn_size}); use --ds.ring_attn_size 1"
            )
        if self.packing_samples:
            problems.append(
                "--ds.packing_samples: packed rows mix several sequences in one hidden-state row, which the "
                "regularizer cannot split into pairs (got True); remove --ds.packing_samples"
            )
        loss = self.ganpo.preference_loss
        if loss is not None and (self.ipo_enable or self.label_smoothing > 0):
            own = "--model.ipo_enable" if self.ipo_enable else f"--model.label_smoothing {self.label_smoothing}"
            problems.append(
                f"--ganpo.preference_loss: {loss!r} replaces OpenRLHF's DPO loss, which {own} configures "
                f"(got both); drop {own} or --ganpo.preference_loss"
            )
        if loss == "simpo" and self.ganpo.simpo_gamma is None:
            problems.append(
                "--ganpo.simpo_gamma: SimPO needs its margin γ and OpenRLHF has none (got nothing); "
                "add e.g. --ganpo.simpo_gamma 0.5"
            )
        if loss != "simpo" and self.ganpo.simpo_gamma is not None:
            problems.append(
                f"--ganpo.simpo_gamma: only --ganpo.preference_loss simpo reads it (got {self.ganpo.simpo_gamma} "
                f"with preference_loss {loss!r}); remove it or add --ganpo.preference_loss simpo"
            )
        if problems:
            raise ValueError("\n  ".join(problems))
        return self


class RMHostCheck(BaseModel):
    """How ``--apo.*`` fits ``openrlhf.cli.train_rm``'s own flags (checked before any model loads)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    margin_loss: bool
    loss_type: str
    apo: APOSettings

    @classmethod
    def from_args(cls, args: Any) -> RMHostCheck:
        return cls(margin_loss=args.model.margin_loss_enable, loss_type=args.model.loss_type, apo=args.apo)

    @model_validator(mode="after")
    def _fits(self) -> RMHostCheck:
        problems = []
        if self.margin_loss:
            problems.append(
                "--model.margin_loss_enable: APO's loss has no margin term and the per-row slot OpenRLHF uses for "
                "margins carries the is_apo flags (got True); remove --model.margin_loss_enable"
            )
        if self.loss_type != "sigmoid":
            problems.append(
                f"--model.loss_type: APO uses the Bradley–Terry (sigmoid) loss on both kinds of pairs "
                f"(got {self.loss_type!r}); use --model.loss_type sigmoid"
            )
        if problems:
            raise ValueError("\n  ".join(problems))
        return self
