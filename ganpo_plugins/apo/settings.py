"""The APO reward-model loss weights, validated once for every host.

TRL reads them from ``APORewardConfig`` (``apo_c_human``, ``apo_c_apo``,
``apo_samples_per_prompt``), Axolotl from an ``apo:`` YAML block; both go through
:class:`APOSettings`, so a bad value fails the same way everywhere, before any model loads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import format_error

__all__ = ["ARGUMENT_PREFIX", "APOConfigError", "APOSettings", "apo_arguments_dataclass", "parse_apo_settings"]

#: The APO fields of a flat training-arguments class are ``apo_<field>`` (``apo_c_apo``).
ARGUMENT_PREFIX = "apo_"


class APOConfigError(ValueError):
    """Invalid APO settings; the message names each bad key, its value and the fix."""


class APOSettings(BaseModel):
    """``L_RM = c_human · BT(human) + (c_apo / k) · BT(APO)``; defaults are the paper's reference settings."""

    model_config = ConfigDict(extra="forbid")

    c_human: float = Field(1.0, description="weight of the human preference pairs")
    c_apo: float = Field(0.1, description="weight of the APO pairs (golden response vs. LLM sample)")
    samples_per_prompt: int = Field(4, ge=1, description="k: LLM samples (APO pairs) per prompt")

    @field_validator("c_human", "c_apo")
    @classmethod
    def _finite_non_negative(cls, v: float, info: Any) -> float:
        if not (math.isfinite(v) and v >= 0):
            reference = 1.0 if info.field_name == "c_human" else 0.1
            raise ValueError(f"must be a finite number >= 0; the paper uses {reference}")
        return v

    @model_validator(mode="after")
    def _some_weight(self) -> APOSettings:
        if self.c_human == 0 and self.c_apo == 0:
            raise ValueError("c_human and c_apo are both 0, so the loss is 0: set c_human: 1.0 (the paper's value)")
        return self

    def rm_loss(self, chosen: Any, rejected: Any, is_apo: Any) -> Any:
        """The APO reward-model loss with these weights (:func:`ganpo_plugins.formulas.functional.apo_rm_loss`)."""
        from ..formulas.functional import apo_rm_loss

        return apo_rm_loss(chosen, rejected, is_apo, self.c_human, self.c_apo, self.samples_per_prompt)

    def describe(self) -> str:
        """The loss with these weights, as the hosts print it."""
        return f"L = {self.c_human} · BT(human) + ({self.c_apo} / {self.samples_per_prompt}) · BT(APO)"

    def as_arguments(self) -> dict[str, Any]:
        """The settings as flat training arguments (``{"apo_c_human": 1.0, ...}``)."""
        return {ARGUMENT_PREFIX + k: v for k, v in self.model_dump().items()}

    @classmethod
    def from_arguments(cls, args: Any) -> APOSettings:
        """The validated settings of a training-arguments object (errors name ``apo_*`` fields)."""
        values = {name: getattr(args, ARGUMENT_PREFIX + name) for name in cls.model_fields}
        return parse_apo_settings(values, prefix=ARGUMENT_PREFIX)


def apo_arguments_dataclass() -> type:
    """A dataclass with one ``apo_<field>`` per :class:`APOSettings` field (its default and
    description): the APO part of a training-arguments class (TRL's, Axolotl's)."""
    fields = [
        (
            ARGUMENT_PREFIX + name,
            info.annotation,
            dataclasses.field(default=info.default, metadata={"help": info.description}),
        )
        for name, info in APOSettings.model_fields.items()
    ]
    return dataclasses.make_dataclass("APOArguments", fields)


def parse_apo_settings(data: Mapping[str, Any] | APOSettings | None, prefix: str = "apo") -> APOSettings:
    """Validate ``data`` into :class:`APOSettings`; raise :class:`APOConfigError` listing every bad key
    as ``prefix.key: problem (got value)`` (``prefix="apo_"`` gives flat names like ``apo_c_apo``)."""
    if isinstance(data, APOSettings):
        return data
    try:
        return APOSettings.model_validate(dict(data or {}))
    except ValidationError as exc:
        sep = "" if prefix.endswith("_") else "."
        lines = [
            prefix + sep + format_error(err, "", APOSettings)
            if err["loc"]
            else f"{prefix.rstrip('_.')}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        ]
        raise APOConfigError("invalid APO settings:\n  " + "\n  ".join(lines)) from None
