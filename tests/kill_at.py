"""``python tests/kill_at.py POINT -m MODULE ARGS...``: run ``python -m MODULE ARGS...`` and SIGKILL it
from inside at a known point, so a kill test never races the run (a poll that fires too late on a
fast machine). Points:

- ``trainer-step:N``: when a Hugging Face ``Trainer`` begins optimiser step N + 1, i.e. once step N,
  its checkpoint and every ``on_save`` callback are done;
- ``apo-batch:N``: when ``ganpo_plugins.apo`` starts the work of batch N + 1, i.e. once N batches are
  written and synced.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from typing import Any


def _kill() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _at_trainer_step(n: int) -> None:
    from transformers.trainer_callback import CallbackHandler

    on_step_begin = CallbackHandler.on_step_begin

    def killing(handler: CallbackHandler, args: Any, state: Any, control: Any) -> Any:
        if state.global_step == n:
            _kill()
        return on_step_begin(handler, args, state, control)

    CallbackHandler.on_step_begin = killing


def _at_apo_batch(n: int) -> None:
    from ganpo_plugins.apo import cli

    run_resumable = cli._run_resumable

    def killing(out: Any, settings: Any, todo: Any, done: int, batch_size: int, stop_after: Any, work: Any, *rest: Any):
        batches = []

        def counted(rows: Any) -> Any:
            batches.append(rows)
            if len(batches) == n + 1:
                _kill()
            return work(rows)

        return run_resumable(out, settings, todo, done, batch_size, stop_after, counted, *rest)

    cli._run_resumable = killing


POINTS = {"trainer-step": _at_trainer_step, "apo-batch": _at_apo_batch}

if __name__ == "__main__":
    point, flag, module, *args = sys.argv[1:]
    assert flag == "-m", "usage: kill_at.py POINT -m MODULE ARGS..."
    name, n = point.split(":")
    POINTS[name](int(n))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
