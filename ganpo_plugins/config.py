"""One validated configuration shared by every adapter.

Axolotl reads it from a ``ganpo:`` YAML block, OpenRLHF from ``--ganpo.*`` flags, TRL users
pass it directly. Every error names the key, the value and the fix.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .protocol import MaskMode

__all__ = ["DiscriminatorConfig", "DiscriminatorOptimizerConfig", "GANPOConfig", "GANPOConfigError", "parse_config"]


class GANPOConfigError(ValueError):
    """Invalid regularizer configuration; the message names each bad key, its value and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _positive(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0")
    return value


class DiscriminatorConfig(_Strict):
    """The discriminator architecture (defaults: the paper's Transformer discriminator)."""

    kind: str = Field("transformer", description="registered discriminator name: transformer, mlp, or a plugin's")
    d_model: int = Field(512, ge=1, description="width of the projection, encoder and head")
    num_layers: int = Field(2, ge=1, description="encoder layers (transformer) or hidden layers (mlp)")
    num_heads: int = Field(8, ge=1, description="attention heads (transformer); must divide d_model")
    ffn_size: int = Field(2048, ge=1, description="feed-forward width (transformer)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout inside the encoder (transformer)")
    spectral_norm: bool = Field(True, description="spectrally normalise the linear projections")
    power_iterations: int = Field(
        3,
        ge=1,
        description="spectral norm power iterations per discriminator step (3: the public release's effective count)",
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        from .registry import check_name

        return check_name("discriminator", v)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> DiscriminatorConfig:
        if self.kind == "transformer" and self.d_model % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must divide d_model={self.d_model}; "
                f"pick num_heads from {[h for h in range(1, 17) if self.d_model % h == 0]}"
            )
        return self


class DiscriminatorOptimizerConfig(_Strict):
    """The discriminators' own AdamW and schedule (one optimiser per discriminator)."""

    lr: float | None = Field(None, description="learning rate; default: policy lr × lr_ratio")
    lr_ratio: float = Field(0.5, description="discriminator lr as a fraction of the policy lr, when lr is unset")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = Field(0.01, ge=0.0)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int | None = Field(None, ge=0, description="default: the policy's warm-up steps")
    update_ratio: int = Field(1, ge=1, description="discriminator optimiser steps per policy optimiser step")
    max_grad_norm: float | None = Field(None, description="clip discriminator gradients to this norm")

    @field_validator("lr", "lr_ratio", "eps", "max_grad_norm")
    @classmethod
    def _finite_positive(cls, v: float | None, info: Any) -> float | None:
        return v if v is None else _positive(info.field_name, v)

    @field_validator("betas")
    @classmethod
    def _betas_in_unit_interval(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("betas must both lie in [0, 1); the default is [0.9, 0.999]")
        return v


# Keys every regularizer accepts (the adapters read them); the rest belong to one regularizer,
# which lists the ones it reads in its factory's ``config_keys``.
COMMON_KEYS = frozenset(
    {"regularizer", "weight", "mask", "preference_loss", "simpo_gamma", "seed", "save_every_rank", "options"}
)


class GANPOConfig(_Strict):
    """Configuration of a latent regularizer and the preference loss it is added to.

    ``L = L_PO + weight · L_reg`` (docs/methods.md, GANPO).
    """

    regularizer: str = Field("ganpo", description="registered regularizer name: ganpo, mmd, or a plugin's")
    weight: float = Field(1.0, description="λ, the weight of the regularizer term (the paper uses 1)")
    mask: MaskMode = Field("response", description="positions the regularizer sees: response, sequence or none")
    max_positions: int = Field(2048, ge=1, description="longer position sequences are truncated to their start")
    ema_momentum: float = Field(0.9, description="momentum of the running means of discriminator scores")
    discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)
    optimizer: DiscriminatorOptimizerConfig = Field(default_factory=DiscriminatorOptimizerConfig)
    preference_loss: str | None = Field(
        None, description="base preference loss (a GPO kind or simpo); default: the host's own loss"
    )
    simpo_gamma: float | None = Field(None, description="SimPO margin γ where the host has none")
    seed: int | None = Field(None, description="seed of the regularizer's own RNG; default: the host's seed")
    saturation_patience: int = Field(
        100, ge=1, description="warn when a discriminator stays saturated for this many of its steps"
    )
    save_every_rank: bool = Field(False, description="every rank writes its regularizer state, not only rank 0")
    options: dict[str, Any] = Field(default_factory=dict, description="regularizer-specific options")

    @field_validator("regularizer")
    @classmethod
    def _known_regularizer(cls, v: str) -> str:
        from .registry import check_name

        return check_name("regularizer", v)

    @field_validator("preference_loss")
    @classmethod
    def _known_loss(cls, v: str | None) -> str | None:
        from .registry import check_name

        return v if v is None else check_name("preference_loss", v)

    @model_validator(mode="after")
    def _keys_fit_regularizer(self) -> GANPOConfig:
        from .registry import resolve

        factory = resolve("regularizer", self.regularizer)
        own_keys = getattr(factory, "config_keys", None)
        if own_keys is not None:
            # Only values that differ from the default matter (a full dump of a config is fine).
            unused = sorted(
                key
                for key in self.model_fields_set - COMMON_KEYS - set(own_keys)
                if getattr(self, key) != type(self).model_fields[key].get_default(call_default_factory=True)
            )
            if unused:
                keys = ", ".join(unused)
                raise ValueError(
                    f"{keys}: not used by regularizer {self.regularizer!r}; remove them or choose a "
                    "regularizer that reads them"
                )
        options_model = getattr(factory, "options_model", None)
        if options_model is None and self.options:
            raise ValueError(f"regularizer {self.regularizer!r} takes no options; remove options: {self.options}")
        if options_model is not None:
            try:
                options_model.model_validate(self.options)
            except ValidationError as exc:
                raise ValueError("; ".join(_format_error(e, "options", options_model) for e in exc.errors())) from None
        return self

    @field_validator("weight")
    @classmethod
    def _finite_non_negative(cls, v: float) -> float:
        if not (math.isfinite(v) and v >= 0):
            raise ValueError("weight must be a finite number >= 0; the paper uses 1.0")
        return v

    @field_validator("seed")
    @classmethod
    def _seed_in_torch_range(cls, v: int | None) -> int | None:
        # torch.manual_seed takes [-2**63, 2**64 - 1] and maps a negative seed s to 2**64 + s, so
        # -1 would silently equal 18446744073709551615; beyond that range it raises mid-build.
        if v is not None and not 0 <= v < 2**64:
            raise ValueError("seed must be an integer in [0, 2**64 - 1] (the range torch.manual_seed accepts)")
        return v

    @field_validator("ema_momentum")
    @classmethod
    def _momentum_in_unit_interval(cls, v: float) -> float:
        if not (0.0 <= v < 1.0):
            raise ValueError("ema_momentum must lie in [0, 1); the paper uses 0.9")
        return v


def _format_error(err: Mapping[str, Any], prefix: str, model: type[BaseModel]) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join([prefix, *loc] if prefix else loc)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        fields = _fields_at(model, loc[:-1])
        hint = difflib.get_close_matches(loc[-1], fields, n=1)
        msg = f"unknown key; known keys here: {', '.join(fields)}" + (f". Did you mean {hint[0]!r}?" if hint else "")
    elif err["type"] == "literal_error":
        hint = difflib.get_close_matches(
            str(err.get("input")), [str(x) for x in err["ctx"]["expected"].split("'")[1::2]], n=1
        )
        msg += f". Did you mean {hint[0]!r}?" if hint else ""
    value = err.get("input")
    shown = "" if err["type"] == "extra_forbidden" or isinstance(value, dict) else f" (got {value!r})"
    return f"{key}: {msg}{shown}"


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return list(model.model_fields)


def parse_config(data: Mapping[str, Any] | GANPOConfig | None, prefix: str = "ganpo") -> GANPOConfig:
    """Validate ``data`` into a :class:`GANPOConfig`; raise :class:`GANPOConfigError` listing
    every bad key as ``prefix.key: problem (got value)``."""
    if isinstance(data, GANPOConfig):
        return data
    try:
        return GANPOConfig.model_validate(dict(data or {}))
    except ValidationError as exc:
        lines = [_format_error(e, prefix, GANPOConfig) for e in exc.errors()]
        raise GANPOConfigError("invalid regularizer configuration:\n  " + "\n  ".join(lines)) from None
