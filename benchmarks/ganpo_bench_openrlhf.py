"""Benchmark-only launcher: runs an OpenRLHF DPO CLI module with a step probe.

    python -m ganpo_bench_openrlhf PROBE.json MODULE [flags...]

``MODULE`` is ``openrlhf.cli.train_dpo`` (plain DPO) or ``ganpo_openrlhf.train_dpo`` (GANPO);
it runs unchanged as ``__main__`` (``runpy``), as ``python -m MODULE flags...`` would. Two host
methods are wrapped at class level, before the CLI is imported, to feed a
:class:`ganpo_bench_probe.StepProbe` (written to ``PROBE.json`` at exit):

- ``DPOTrainer.concatenated_forward``: the policy's forward (grad enabled) marks the start of a
  step and its input shape is recorded; GANPO's trainer subclass calls it through ``super()``;
- ``DeepspeedStrategy.optimizer_step``: its return marks the end of a step.

Run with ``--train.batch_size`` equal to ``--train.micro_batch_size`` (no accumulation), so
each ``optimizer_step`` call is one policy update.
"""

from __future__ import annotations

import atexit
import runpy
import sys
from typing import Any

from ganpo_bench_probe import StepProbe


def _install(probe: StepProbe) -> None:
    import torch
    from openrlhf.trainer.dpo_trainer import DPOTrainer
    from openrlhf.utils.deepspeed.deepspeed import DeepspeedStrategy

    forward = DPOTrainer.concatenated_forward
    optimizer_step = DeepspeedStrategy.optimizer_step

    def concatenated_forward(self: Any, model: Any, chosen_ids: Any, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled() and model is self.model:
            probe.start_training()
            probe.step_begin()
            probe.record_shape((2 * chosen_ids.shape[0], max(chosen_ids.shape[1], args[1].shape[1])))
        return forward(self, model, chosen_ids, *args, **kwargs)

    def timed_optimizer_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = optimizer_step(self, *args, **kwargs)
        probe.step_end()
        return out

    DPOTrainer.concatenated_forward = concatenated_forward
    DeepspeedStrategy.optimizer_step = timed_optimizer_step


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit("usage: python -m ganpo_bench_openrlhf PROBE.json MODULE [flags...]")
    probe = StepProbe(sys.argv[1])
    module, flags = sys.argv[2], sys.argv[3:]
    _install(probe)
    atexit.register(probe.dump)
    sys.argv = [module, *flags]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
