"""Dotted command-line flags for a pydantic model: ``--prefix.key.sub VALUE``, for every CLI a
host adapter wraps (OpenRLHF's launchers today).

Style of OpenRLHF 0.11: dotted names (``--ganpo.discriminator.d_model 256``), one value per flag
(two for ``betas``, like ``--adam.betas``), switches for booleans (``--ganpo.save_every_rank`` on,
``--ganpo.discriminator.no_spectral_norm`` off), JSON values below free-form ``dict`` fields.
Values stay strings here; the pydantic model converts and validates them, so every error names
the flag.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from pydantic import BaseModel

__all__ = ["FlagError", "fail", "flags_help", "parse_cli_flags", "split_flags"]


class FlagError(ValueError):
    """A malformed ``--prefix.*`` flag (missing value, a value given to a switch, ...)."""


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), len(args) < len(typing.get_args(annotation))
    return annotation, False


def _field(model: type[BaseModel], path: list[str]) -> tuple[Any, bool] | None:
    """Annotation and optionality of the field at ``path``; ``dict`` for free-form sub-keys
    (``options``); ``None`` when no such field exists."""
    current: Any = model
    for i, part in enumerate(path):
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        annotation, optional = _unwrap_optional(current.model_fields[part].annotation)
        if typing.get_origin(annotation) is dict or annotation is dict:
            return dict, optional  # free-form below this point
        if i == len(path) - 1:
            return annotation, optional
        current = annotation
    return None


def _parse_free_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def split_flags(argv: Sequence[str], prefix: str, model: type[BaseModel]) -> tuple[list[str], dict[str, Any]]:
    """Split ``argv`` into the host's own arguments and the nested dict of ``prefix.*`` flags.

    Raises :class:`FlagError` for a flag that cannot be read; unknown keys and bad values are
    left to ``model``'s validation (which names them).
    """
    host: list[str] = []
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not (token == prefix or token.startswith(prefix + ".")):
            host.append(token)
            continue
        name, has_inline, inline = token.partition("=")
        path = name[len(prefix) + 1 :].split(".")
        if name == prefix or "" in path:
            raise FlagError(f"{name}: expected {prefix}.<key> (e.g. {prefix}.{next(iter(model.model_fields))} ...)")
        field = _field(model, path)
        negated = None
        if field is None and path[-1].startswith("no_"):
            negated = _field(model, [*path[:-1], path[-1][3:]])
        if (field and field[0] is bool) or (negated and negated[0] is bool):
            if has_inline:
                on = ".".join([prefix, *path[:-1], path[-1].removeprefix("no_")])
                raise FlagError(f"{name} is a switch and takes no value: write {on} (on) or {_negation(on)} (off)")
            value: Any = field is not None
            path = path if field is not None else [*path[:-1], path[-1][3:]]
        else:
            annotation, optional = field if field is not None else (None, False)
            args = typing.get_args(annotation) if typing.get_origin(annotation) is tuple else ()
            count = len(args) if args and Ellipsis not in args else 1
            if has_inline:
                items = [inline]
            elif field is None:  # unknown key: take a value if one follows; validation names the key
                items = argv[i : i + 1] if i < len(argv) and not argv[i].startswith("--") else []
            else:
                items = list(argv[i : i + count])
                if len(items) < count or any(x.startswith("--") for x in items):
                    raise FlagError(f"{name} expects {count} value{'s' if count > 1 else ''}")
            i += 0 if has_inline else len(items)
            if annotation is dict:
                items = [_parse_free_value(x) for x in items]
            if optional and len(items) == 1 and items[0] in ("none", "null", "None"):
                items = [None]
            value = items if count > 1 else (items[0] if items else True)
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise FlagError(f"{name}: {'.'.join(path[:-1])} was already given a value")
        node[path[-1]] = value
    return host, values


def _negation(flag: str) -> str:
    head, _, last = flag.rpartition(".")
    return f"{head}.no_{last}"


def flags_help(prefix: str, model: type[BaseModel], title: str) -> str:
    """One line per flag, from the model's fields and descriptions."""
    lines = [f"{title}:"]

    def walk(m: type[BaseModel], path: list[str]) -> None:
        for key, info in m.model_fields.items():
            annotation, _ = _unwrap_optional(info.annotation)
            flag = ".".join([prefix, *path, key])
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, [*path, key])
                continue
            default = info.get_default(call_default_factory=True)
            if annotation is bool:
                usage = f"{flag} / {_negation(flag)}"
            elif typing.get_origin(annotation) is dict or annotation is dict:
                usage = f"{flag}.<key> VALUE"
            elif typing.get_origin(annotation) is tuple:
                usage = f"{flag} " + " ".join("X" for _ in typing.get_args(annotation))
            else:
                usage = f"{flag} VALUE"
            text = " ".join(x for x in (info.description, f"(default: {default})") if x)
            lines.append(f"  {usage:<48} {text}")

    walk(model, [])
    return "\n".join(lines)


def fail(message: str, prog: str) -> NoReturn:
    """Stop like argparse does: the message on stderr, exit status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def parse_cli_flags(
    argv: Sequence[str], prefix: str, model: type[BaseModel], parse: Callable[..., Any], prog: str, title: str
) -> tuple[list[str], Any]:
    """Take the ``prefix.*`` flags out of a host CLI's ``argv`` and validate them with
    ``parse(values, prefix=prefix)``; return the host's flags and the parsed value. ``-h`` also
    prints our flags (the host prints its own after); bad flags stop like argparse does."""
    if "-h" in argv or "--help" in argv:
        print(flags_help(prefix, model, title))
    try:
        host_argv, values = split_flags(argv, prefix, model)
        return host_argv, parse(values, prefix=prefix)
    except ValueError as exc:  # FlagError and the config errors name the flag
        fail(str(exc), prog)
