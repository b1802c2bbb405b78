"""Run a host's training CLI module unchanged, with our flags taken out and our classes swapped in.

A host whose CLI builds its parser and trainer inside ``if __name__ == "__main__"`` (OpenRLHF's
``openrlhf.cli.train_dpo``) offers no call to attach to. :func:`run_host_cli` runs that module
with :func:`runpy.run_module` as ``__main__`` after, in this process only: (1) taking the
``prefix.*`` flags out of ``argv`` and validating them, before the host is even imported; (2) the
version gate of each host; (3) replacing named classes in their defining modules, which the CLI
imports by name when it runs; (4) wrapping the function through which the CLI turns its parsed
flags into the arguments it trains with, so that it attaches our validated value as
``args.<attach_as>`` and runs ``check(args)`` (the host rules) before any model loads.

Every object is named as ``"module:attribute"`` and imported only after the gate.
"""

from __future__ import annotations

import importlib
import runpy
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from .flags import fail, parse_cli_flags
from .versions import HostVersionError, require_host

__all__ = ["run_host_cli"]


def _resolve(path: str) -> tuple[Any, str]:
    module, _, name = path.partition(":")
    return importlib.import_module(module), name


def run_host_cli(
    *,
    prog: str,
    module: str,
    argv: Sequence[str] | None,
    prefix: str,
    model: type[BaseModel],
    parse: Callable[..., Any],
    title: str,
    hosts: Sequence[str],
    swaps: Mapping[str, str],
    args_hook: str,
    attach_as: str,
    check: Callable[[Any], Any],
) -> None:
    """Run ``python -m module`` with the host's flags of ``argv`` (default: ``sys.argv[1:]``);
    ``swaps``: ``{"host.module:Class": "our.module:Class"}``; ``args_hook``: the host function
    that returns the parsed arguments. Bad flags, an unsupported host and conflicts ``check``
    raises (``ValueError``) stop like argparse does: the message and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    host_argv, value = parse_cli_flags(argv, prefix, model, parse, prog, title)
    try:
        for host in hosts:
            require_host(host)
    except HostVersionError as exc:
        fail(str(exc), prog)
    for target, ours in swaps.items():
        setattr(*_resolve(target), getattr(*_resolve(ours)))
    owner, name = _resolve(args_hook)
    original = getattr(owner, name)

    def hook(*args: Any, **kwargs: Any) -> Any:
        parsed = original(*args, **kwargs)
        setattr(parsed, attach_as, value)
        try:
            check(parsed)
        except ValueError as exc:
            fail(f"the flags do not fit together: {exc}", prog)
        return parsed

    setattr(owner, name, hook)
    sys.argv = [module, *host_argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
