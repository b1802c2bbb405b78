"""The ``ganpo:`` block of an Axolotl config, validated with the rest of the config.

Axolotl merges this model into its own config model (``get_input_args``), so a bad value
stops ``axolotl train`` at config validation, before any model or dataset loads, with a
message naming the key. The model validator sees the whole Axolotl config and refuses
combinations the adapter cannot run faithfully.
"""

from __future__ import annotations

from typing import Any

from ganpo_trl.settings import TRLSettings
from pydantic import BaseModel, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from ganpo_plugins import GANPOConfigError, RegularizerConfig, parse_config

from .plugin import ganpo_enabled

__all__ = ["GANPOArgs", "settings_from_axolotl"]

SUPPORTED_RL = ("dpo", "ipo", "simpo")


class GANPOArgs(BaseModel):
    """Adds ``ganpo:`` to Axolotl's config (absent: the defaults, GANPO as in the paper)."""

    # SerializeAsAny: Axolotl re-dumps its config; the regularizer's own keys must survive that.
    ganpo: SerializeAsAny[RegularizerConfig] | None = Field(
        None, description="latent regularizer added to the DPO/IPO/SimPO loss (ganpo-plugins)"
    )

    @field_validator("ganpo", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> RegularizerConfig | None:
        if value is None or isinstance(value, RegularizerConfig):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"ganpo must be a mapping of keys to values, got {type(value).__name__} {value!r}")
        try:
            return parse_config(value)
        except GANPOConfigError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _fits_axolotl(self) -> GANPOArgs:
        # ``self`` is Axolotl's whole config model: this class is one of its bases.
        cfg = self.__dict__
        if not ganpo_enabled(cfg):
            return self  # loaded by entry point in a run that does not ask for GANPO: inert
        rl = _value(cfg.get("rl"))
        problems: list[str] = []
        if rl not in SUPPORTED_RL:
            problems.append(
                f"rl={rl!r}: the ganpo plugin supports rl: {', '.join(SUPPORTED_RL)}; set one or remove the plugin"
            )
        if cfg.get("sample_packing"):
            problems.append(
                "sample_packing=true: packed sequences have no per-pair hidden states; set sample_packing: false"
            )
        if (cfg.get("context_parallel_size") or 1) > 1:
            problems.append(
                "context_parallel_size>1 shards each sequence's hidden states across ranks; "
                "set context_parallel_size: 1"
            )
        if rl in SUPPORTED_RL:
            try:
                settings_from_axolotl(cfg, self.ganpo or parse_config(None))
            except ValidationError as exc:
                problems.extend(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        if problems:
            raise ValueError("ganpo plugin: " + "; ".join(problems))
        return self


def settings_from_axolotl(cfg: dict[str, Any], config: RegularizerConfig) -> TRLSettings:
    """The TRL trainer settings Axolotl will build from ``cfg`` (raises on conflicts, naming
    Axolotl's keys)."""
    rl = _value(cfg.get("rl"))
    names = {
        "use_liger_kernel": "dpo_use_liger_kernel",
        "padding_free": "dpo_padding_free",
        "loss_type": "rl" if rl in ("ipo", "simpo") else "dpo_loss_type",
        "loss_weights": "dpo_loss_weights",
        "use_weighting": "dpo_use_weighting",
        "label_smoothing": "dpo_label_smoothing",
    }
    if rl == "simpo":
        fields: dict[str, Any] = {"trainer": "cpo", "loss_type": ("simpo",), "simpo_gamma": cfg.get("simpo_gamma")}
    else:
        loss_type = ("ipo",) if rl == "ipo" else tuple(cfg.get("dpo_loss_type") or ("sigmoid",))
        weights = cfg.get("dpo_loss_weights")
        fields = {
            "trainer": "dpo",
            "loss_type": loss_type,
            "loss_weights": None if weights is None else tuple(weights),
            "use_weighting": bool(cfg.get("dpo_use_weighting")),
            "use_liger_kernel": bool(cfg.get("dpo_use_liger_kernel")),
            "padding_free": bool(cfg.get("dpo_padding_free")),
        }
    return TRLSettings.model_validate({**fields, "ganpo": config}, context={"names": names})


def _value(x: Any) -> Any:
    return getattr(x, "value", x)  # Axolotl's enums (RLType) compare by their string value
