"""The configuration every regularizer shares, and the parser every adapter runs.

Axolotl reads it from a ``ganpo:`` YAML block, OpenRLHF from ``--ganpo.*`` flags, TRL users
pass it directly. Every error names the key, the value and the fix.

A block holds the common keys (:class:`RegularizerConfig`) and the keys of the regularizer it
names. A regularizer factory declares the model of its keys as ``config_model``, a subclass of
:class:`RegularizerConfig` (default: :class:`RegularizerConfig` itself, the common keys only).
A subclass adds keys at the top of the block (GANPO's ``discriminator``, ``optimizer``, ...:
:class:`~ganpo_plugins.ganpo_config.GANPOConfig`), or sets ``options_model`` to validate the
``options:`` block (``mmd``'s ``bandwidths``). This module imports neither torch nor the
registry: :func:`parse_config` consults the registry only when it runs, to find the named
regularizer's ``config_model`` and to check every registered name a config uses.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "BLOCK",
    "MASK_MODES",
    "ConfigModel",
    "GANPOConfigError",
    "LearnedConfig",
    "MaskMode",
    "OptimizerConfig",
    "RegularizerBlock",
    "RegularizerConfig",
    "config_model",
    "parse_block",
    "parse_config",
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
                raise ValueError("; ".join(_format_error(e, "options", model) for e in exc.errors())) from None
        return self

    def registered_names(self) -> dict[str, tuple[str, str]]:
        """``{dotted key: (kind, name)}`` for every registered name this config uses besides
        ``regularizer``; :func:`parse_config` resolves each through the registry."""
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
    (:class:`~ganpo_plugins.learned.LearnedRegularizer`)."""

    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)


def parse_block(value: Any) -> RegularizerConfig:
    """A ``ganpo:`` block as a host's YAML loader hands it over (``None``: the key with nothing
    under it, the defaults); :class:`GANPOConfigError` for a value that is no mapping or a bad key."""
    if value is not None and not isinstance(value, Mapping | RegularizerConfig):
        raise GANPOConfigError(f"ganpo must be a mapping of keys to values, got {type(value).__name__} {value!r}")
    return parse_config(value)


def _parse_block(value: Any) -> RegularizerConfig | None:
    if value is None or isinstance(value, RegularizerConfig):
        return value
    try:
        return parse_block(value)
    except GANPOConfigError as exc:
        raise ValueError(str(exc)) from None


#: A ``ganpo:`` block as a field of a host's pydantic config model (Axolotl's): parsed into the
#: named regularizer's config, every error naming the key; re-dumped with the regularizer's own keys.
RegularizerBlock = Annotated[SerializeAsAny[RegularizerConfig] | None, BeforeValidator(_parse_block)]


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


def config_model(factory: Any) -> type[RegularizerConfig]:
    """The config model a regularizer factory declares as ``config_model`` (default: the common keys)."""
    return getattr(factory, "config_model", RegularizerConfig)


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
    return _problem(key, msg, _UNSHOWN if err["type"] == "extra_forbidden" else err.get("input"))


_UNSHOWN = object()


def _problem(key: str, msg: str, value: Any = _UNSHOWN) -> str:
    shown = "" if value is _UNSHOWN or isinstance(value, dict) else f" (got {value!r})"
    return f"{key}: {msg}{shown}"


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return list(model.model_fields)


def parse_config(data: Mapping[str, Any] | RegularizerConfig | None, prefix: str = "ganpo") -> RegularizerConfig:
    """Validate a block into the named regularizer's ``config_model``; raise
    :class:`GANPOConfigError` listing every bad key as ``prefix.key: problem (got value)``.

    Runs the registry: the regularizer's name picks the model, and every registered name the
    config uses must resolve. A key of another registered regularizer is refused unless it
    holds that key's default (a full dump of another regularizer's config is fine).
    """
    from . import registry

    if isinstance(data, RegularizerConfig):
        try:
            if config_model(registry.resolve("regularizer", data.regularizer)) is type(data):
                return _check_names(data, prefix, registry)
        except registry.PluginError:
            pass  # parsed again below, which names the problem
        data = data.model_dump(exclude_unset=True)
    block = dict(data or {})
    problems: list[str] = []
    name = block.get("regularizer", RegularizerConfig.model_fields["regularizer"].default)
    model: type[RegularizerConfig] | None = None
    if isinstance(name, str):  # else validation names the bad value
        try:
            model = config_model(registry.resolve("regularizer", name))
        except registry.PluginError as exc:
            problems.append(_problem(f"{prefix}.regularizer", str(exc), name))
    if model is None:  # which keys the intended regularizer reads is unknown: check the common ones
        model = RegularizerConfig
        block = {k: v for k, v in block.items() if k in model.model_fields}
    block, unused = _split_unused(block, model, registry)
    if unused:
        problems.append(
            f"{prefix}: {', '.join(unused)}: not used by regularizer {name!r}; remove them or choose a "
            "regularizer that reads them"
        )
    try:
        config = model.model_validate(block)
    except ValidationError as exc:
        problems.extend(_format_error(e, prefix, model) for e in exc.errors())
    else:
        if not problems:
            return _check_names(config, prefix, registry)
    raise GANPOConfigError("invalid regularizer configuration:\n  " + "\n  ".join(problems))


def _split_unused(
    block: dict[str, Any], model: type[RegularizerConfig], registry: Any
) -> tuple[dict[str, Any], list[str]]:
    """``block`` without the keys of other registered regularizers, and those of them that
    differ from their default there."""
    owners = {}
    for other in registry.known_names("regularizer"):
        other_model = config_model(registry.resolve("regularizer", other))
        owners.update({key: other_model for key in other_model.model_fields if key not in owners})
    kept, unused = {}, []
    for key, value in block.items():
        owner = owners.get(key)
        if key in model.model_fields or owner is None:
            kept[key] = value
        elif not _is_default(owner, key, value):
            unused.append(key)
    return kept, sorted(unused)


def _is_default(model: type[RegularizerConfig], key: str, value: Any) -> bool:
    try:
        parsed = getattr(model.model_validate({key: value}), key)
    except ValidationError:
        return False
    return parsed == model.model_fields[key].get_default(call_default_factory=True)


def _check_names(config: RegularizerConfig, prefix: str, registry: Any) -> RegularizerConfig:
    problems = []
    for key, (kind, name) in config.registered_names().items():
        try:
            registry.resolve(kind, name)
        except registry.PluginError as exc:
            problems.append(_problem(f"{prefix}.{key}", str(exc), name))
    if problems:
        raise GANPOConfigError("invalid regularizer configuration:\n  " + "\n  ".join(problems))
    return config
