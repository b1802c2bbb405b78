"""Benchmark-only Axolotl plugin: times each optimiser step of the real Axolotl training loop.

    plugins:
      - ganpo_bench_axolotl.StepProbePlugin     # benchmarks/ on PYTHONPATH
      - ganpo_axolotl.GANPOPlugin               # in the GANPO runs only

Its callback (``on_step_begin`` / ``on_step_end`` of the HF Trainer Axolotl builds) feeds a
:class:`ganpo_bench_probe.StepProbe`, which writes ``<output_dir>/step_probe.json`` when
training ends. It changes nothing in the run: no trainer method is wrapped; a forward pre-hook
on the policy only reads the shape of its inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from axolotl.integrations.base import BasePlugin
from ganpo_bench_probe import StepProbe
from transformers import TrainerCallback

__all__ = ["PROBE_FILE", "StepProbePlugin"]

PROBE_FILE = "step_probe.json"


class _ProbeCallback(TrainerCallback):
    def __init__(self, path: Path) -> None:
        self.probe = StepProbe(path)
        self._hook: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.probe.start_training()
        if model is not None and self._hook is None:
            self._hook = model.register_forward_pre_hook(self._record_shape, with_kwargs=True)

    def _record_shape(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        import torch

        ids = args[0] if args else kwargs.get("input_ids")
        if ids is not None and torch.is_grad_enabled():  # the policy's training forward only
            self.probe.record_shape(ids.shape)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.probe.step_begin()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.probe.step_end()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.probe.dump()


class StepProbePlugin(BasePlugin):
    """Adds the step-probe callback to the trainer Axolotl builds."""

    def add_callbacks_post_trainer(self, cfg: Any, trainer: Any) -> list[Any]:
        return [_ProbeCallback(Path(cfg.output_dir) / PROBE_FILE)]
