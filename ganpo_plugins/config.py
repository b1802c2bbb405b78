"""The schema of a regularizer config: the keys every regularizer shares, those of a learned one,
and how a validation error is written. Imports neither torch nor the registry.

Axolotl reads a config from a ``ganpo:`` YAML block, OpenRLHF from ``--ganpo.*`` flags, TRL users
pass it directly; :func:`ganpo_plugins.plugins.parse.parse_config` parses it, once, into the named
regularizer's model. Every error names the key, the value and the fix.

A block holds the common keys (:class:`RegularizerConfig`) and the keys of the regularizer it
names. A regularizer factory declares the model of its keys as ``config_model``, a subclass of
:class:`RegularizerConfig` (default: :class:`RegularizerConfig` itself, the common keys only).
A subclass adds keys at the top of the block (GANPO's ``discriminator``, ``optimizer``, ...:
:class:`~ganpo_plugins.regularizers.ganpo_config.GANPOConfig`), or sets ``options_model`` to
validate the ``options:`` block (``mmd``'s ``bandwidths``).
"""

from __future__ import annotations

import difflib
import importlib
import math
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "BLOCK",
    "MASK_MODES",
    "ConfigModel",
    "GANPOConfigError",
    "LearnedConfig",
    "MaskMode",
    "OptimizerConfig",
    "RegularizerConfig",
    "config_problem",
    "format_error",
    "refuse_misspelt_block",
]

MaskMode = Literal["response", "sequence", "none"]
MASK_MODES: tuple[str, ...] = ("response", "sequence", "none")


class GANPOConfigError(ValueError):
    """Invalid regularizer configuration; the message names each bad key, its value and the fix."""


class ConfigModel(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _positive(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0")
    return value


class RegularizerConfig(ConfigModel):
    """The keys every regularizer accepts; the adapters read them.

    ``L = L_PO + weight · L_reg`` (docs/methods.md). A regularizer's ``config_model`` subclasses
    this model; ``options_model`` (a class attribute) is the model of its ``options:`` block,
    ``None`` when it takes no options.
    """

    options_model: ClassVar[type[BaseModel] | None] = None

    regularizer: str = Field("ganpo", description="registered regularizer name: ganpo, mmd, or a plugin's")
    weight: float = Field(1.0, description="λ, the weight of the regularizer term (the paper uses 1)")
    mask: MaskMode = Field("response", description="positions the regularizer sees: response, sequence or none")
    preference_loss: str | None = Field(
        None, description="base preference loss (a GPO kind or simpo); default: the host's own loss"
    )
    simpo_gamma: float | None = Field(None, description="SimPO margin γ where the host has none")
    seed: int | None = Field(None, description="seed of the regularizer's own RNG; default: the host's seed")
    save_every_rank: bool = Field(False, description="every rank writes its regularizer state, not only rank 0")
    options: dict[str, Any] = Field(default_factory=dict, description="regularizer-specific options")

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

    @model_validator(mode="after")
    def _options_fit(self) -> RegularizerConfig:
        model = self.options_model
        if model is None and self.options:
            raise ValueError(f"regularizer {self.regularizer!r} takes no options; remove options: {self.options}")
        if model is not None:
            try:
                model.model_validate(self.options)
            except ValidationError as exc:
                raise ValueError("; ".join(format_error(e, "options", model) for e in exc.errors())) from None
        return self

    def registered_names(self) -> dict[str, tuple[str, str]]:
        """``{dotted key: (kind, name)}`` for every registered name this config uses besides
        ``regularizer``; :func:`~ganpo_plugins.plugins.parse.parse_config` resolves each through
        the registry."""
        if self.preference_loss is None:
            return {}
        return {"preference_loss": ("preference_loss", self.preference_loss)}


class OptimizerConfig(ConfigModel):
    """The own AdamW and schedule of a learned regularizer (one optimiser per learned module)."""

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


class LearnedConfig(RegularizerConfig):
    """The keys of a regularizer that trains modules of its own
    (:class:`~ganpo_plugins.regularizers.learned.LearnedRegularizer`)."""

    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)


#: The name of the regularizer block in a host's YAML config (``ganpo:``).
BLOCK = "ganpo"


def refuse_misspelt_block(keys: Any, host: str) -> None:
    """Refuse a top-level key that looks like a misspelling of :data:`BLOCK` (``gnapo``,
    ``ganpo_``): ``host`` would drop the unknown key and train without the regularizer."""
    for key in keys:
        if isinstance(key, str) and key != BLOCK and difflib.get_close_matches(key.lower(), [BLOCK], cutoff=0.7):
            raise ValueError(
                f"unknown top-level key {key!r}: did you mean {BLOCK!r}? {host} would drop it and train without the "
                f"regularizer; rename it to {BLOCK}:"
            )


def format_error(err: Mapping[str, Any], prefix: str, model: type[BaseModel]) -> str:
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
    return config_problem(key, msg, _UNSHOWN if err["type"] == "extra_forbidden" else err.get("input"))


_UNSHOWN = object()


def config_problem(key: str, msg: str, value: Any = _UNSHOWN) -> str:
    shown = "" if value is _UNSHOWN or isinstance(value, dict) else f" (got {value!r})"
    return f"{key}: {msg}{shown}"


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return list(model.model_fields)


# Moved to the plugins layer in 0.2.0 (this module imports no registry); the old names still work.
_MOVED = {"parse_config", "RegularizerBlock", "config_model"}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"ganpo_plugins.config.{name} moved to ganpo_plugins.plugins.parse.{name} (or import it from ganpo_plugins); "
        "the old path will be removed in a later release",
        DeprecationWarning,
        stacklevel=2,
    )
    # By name, not an import statement: the schema layer imports nothing above it.
    return getattr(importlib.import_module("ganpo_plugins.plugins.parse"), name)
