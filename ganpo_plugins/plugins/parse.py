"""The one place a regularizer config is parsed against the registry.

A config handed in at an edge (Axolotl's ``ganpo:`` YAML block, OpenRLHF's ``--ganpo.*`` flags, a
mapping given to ``attach``) is parsed here once into the named regularizer's ``config_model``
(:mod:`ganpo_plugins.config` holds the schema) and travels as that typed object: everything
downstream takes it as it is (:func:`as_config`). Every error names the key, the value and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, SerializeAsAny, ValidationError

from ..config import GANPOConfigError, RegularizerConfig, config_problem, format_error
from . import registry

__all__ = ["RegularizerBlock", "as_config", "config_model", "parse_config"]


def config_model(factory: Any) -> type[RegularizerConfig]:
    """The config model a regularizer factory declares as ``config_model`` (default: the common keys)."""
    return getattr(factory, "config_model", RegularizerConfig)


def parse_config(data: Mapping[str, Any] | RegularizerConfig | None, prefix: str = "ganpo") -> RegularizerConfig:
    """Validate a block into the named regularizer's ``config_model``; raise
    :class:`GANPOConfigError` listing every bad key as ``prefix.key: problem (got value)``.

    Runs the registry: the regularizer's name picks the model, and every registered name the
    config uses must resolve. A key of another registered regularizer is refused unless it
    holds that key's default (a full dump of another regularizer's config is fine).
    """
    if isinstance(data, RegularizerConfig):
        try:
            if config_model(registry.resolve("regularizer", data.regularizer)) is type(data):
                return _check_names(data, prefix)
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
            problems.append(config_problem(f"{prefix}.regularizer", str(exc), name))
    if model is None:  # which keys the intended regularizer reads is unknown: check the common ones
        model = RegularizerConfig
        block = {k: v for k, v in block.items() if k in model.model_fields}
    block, unused = _split_unused(block, model)
    if unused:
        problems.append(
            f"{prefix}: {', '.join(unused)}: not used by regularizer {name!r}; remove them or choose a "
            "regularizer that reads them"
        )
    try:
        config = model.model_validate(block)
    except ValidationError as exc:
        problems.extend(format_error(e, prefix, model) for e in exc.errors())
    else:
        if not problems:
            return _check_names(config, prefix)
    raise GANPOConfigError("invalid regularizer configuration:\n  " + "\n  ".join(problems))


def _split_unused(block: dict[str, Any], model: type[RegularizerConfig]) -> tuple[dict[str, Any], list[str]]:
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


def _check_names(config: RegularizerConfig, prefix: str) -> RegularizerConfig:
    problems = []
    for key, (kind, name) in config.registered_names().items():
        try:
            registry.resolve(kind, name)
        except registry.PluginError as exc:
            problems.append(config_problem(f"{prefix}.{key}", str(exc), name))
    if problems:
        raise GANPOConfigError("invalid regularizer configuration:\n  " + "\n  ".join(problems))
    return config


def as_config(config: Mapping[str, Any] | RegularizerConfig | None) -> RegularizerConfig:
    """``config`` itself when it is already parsed (a :class:`RegularizerConfig`), else
    :func:`parse_config` of it: what every API that accepts either a mapping or a parsed config
    runs, so a parsed config is never parsed again on its way to the regularizer."""
    return config if isinstance(config, RegularizerConfig) else parse_config(config)


def _parse_block(value: Any) -> RegularizerConfig | None:
    if value is None or isinstance(value, RegularizerConfig):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"ganpo must be a mapping of keys to values, got {type(value).__name__} {value!r}")
    try:
        return parse_config(value)
    except GANPOConfigError as exc:
        raise ValueError(str(exc)) from None


#: A ``ganpo:`` block as a field of a host's pydantic config model (Axolotl's): parsed into the
#: named regularizer's config, every error naming the key; re-dumped with the regularizer's own keys.
RegularizerBlock = Annotated[SerializeAsAny[RegularizerConfig] | None, BeforeValidator(_parse_block)]
