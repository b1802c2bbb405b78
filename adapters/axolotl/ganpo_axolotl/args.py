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
        problems.extend(_fsdp_problems(cfg, rl))
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


def _fsdp_problems(cfg: dict[str, Any], rl: Any) -> list[str]:
    """What the plugin cannot run under the configured FSDP. FSDP1 and FSDP2, full fine-tune and
    LoRA, FULL_ and SHARDED_STATE_DICT are supported (tests/fsdp/test_trl_fsdp.py)."""
    fsdp_config = cfg.get("fsdp_config")
    if not (fsdp_config or cfg.get("fsdp")):
        return []
    fsdp = fsdp_config.model_dump() if isinstance(fsdp_config, BaseModel) else dict(fsdp_config or {})
    version = str(cfg.get("fsdp_version") or fsdp.get("fsdp_version") or 1)  # Axolotl's default: 1
    reference_loaded = not cfg.get("adapter") or bool(cfg.get("rl_adapter_ref_model"))
    problems = []
    if rl == "simpo" and fsdp.get("cpu_ram_efficient_loading"):
        problems.append(
            "fsdp_config.cpu_ram_efficient_loading=true with rl: simpo: ranks other than 0 load the second model "
            "Axolotl loads for SimPO, which the plugin runs as the frozen reference, on the meta device (no weights); "
            "set cpu_ram_efficient_loading: false"
        )
    if version == "2" and cfg.get("precompute_ref_log_probs") and reference_loaded:
        problems.append(
            "precompute_ref_log_probs=true under fsdp_version 2 with a reference model: TRL's precompute pass "
            "hashes the sharded reference's weights (DTensor.numpy()) and fails before training; set "
            "precompute_ref_log_probs: false (with GANPO the reference forward runs anyway, so precomputing saves "
            "nothing)"
        )
    return problems


def _value(x: Any) -> Any:
    return getattr(x, "value", x)  # Axolotl's enums (RLType) compare by their string value
