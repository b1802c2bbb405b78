"""Benchmark-only Axolotl plugin: times each optimiser step of the real Axolotl training loop.

    plugins:
      - ganpo_bench_axolotl.StepProbePlugin     # benchmarks/ on PYTHONPATH
      - ganpo_axolotl.GANPOPlugin               # in the GANPO runs only

Its callback, :class:`ganpo_bench_probe.StepProbeCallback` (``on_step_begin`` /
``on_step_end`` of the HF Trainer Axolotl builds), writes ``<output_dir>/step_probe.json``
when training ends. It changes nothing in the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from axolotl.integrations.base import BasePlugin
from ganpo_bench_probe import PROBE_FILE, StepProbeCallback

__all__ = ["PROBE_FILE", "StepProbePlugin"]


class StepProbePlugin(BasePlugin):
    """Adds the step-probe callback to the trainer Axolotl builds."""

    def add_callbacks_post_trainer(self, cfg: Any, trainer: Any) -> list[Any]:
        return [StepProbeCallback(Path(cfg.output_dir) / PROBE_FILE)]
