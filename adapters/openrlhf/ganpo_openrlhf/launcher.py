"""Run an OpenRLHF CLI module unchanged, with our flags taken out and our classes swapped in.

The host CLI (``openrlhf.cli.train_dpo`` / ``train_rm``) builds its parser and trainer inside
``if __name__ == "__main__"``; we run it with :func:`runpy.run_module` as ``__main__`` after
(1) replacing the trainer class in its defining module, which the CLI imports by name when it
runs, and (2) wrapping ``openrlhf.utils.config.hierarchize``, which the CLI calls on its parsed
arguments right before ``train(args)``: the wrapper attaches our validated config as
``args.<name>`` and checks how it fits the host's flags, before any model loads. Both swaps last
for the launcher's process, which exists to run that one CLI.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ganpo_plugins.flags import fail
from ganpo_plugins.hosts import HostVersionError, require_host

__all__ = ["attach_config", "require_openrlhf", "run_host"]


def require_openrlhf(prog: str) -> None:
    """Stop before OpenRLHF is imported when the installed OpenRLHF or DeepSpeed is outside the
    supported range (the message names the installed version and the range)."""
    try:
        require_host("openrlhf")
        require_host("deepspeed")
    except HostVersionError as exc:
        fail(str(exc), prog)


def attach_config(name: str, value: Any, check: Callable[[Any], Any], prog: str) -> None:
    """Make the host's ``hierarchize`` attach ``value`` as ``args.<name>`` and run ``check(args)``."""
    import openrlhf.utils.config as host_config

    original = host_config.hierarchize

    def hierarchize(flat_args: Any) -> Any:
        args = original(flat_args)
        setattr(args, name, value)
        try:
            check(args)
        except ValueError as exc:
            fail(f"the flags do not fit together: {exc}", prog)
        return args

    host_config.hierarchize = hierarchize


def run_host(module: str, host_argv: Sequence[str]) -> None:
    """Run ``module`` as ``python -m module *host_argv`` would, in this process."""
    sys.argv = [module, *host_argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
