"""Benchmark-only step probe, shared by the host hooks in this folder (never imported by the product).

:class:`StepProbeCallback` feeds it from an HF ``Trainer`` (the Axolotl plugin and the TRL
script here); the OpenRLHF launcher drives it directly.

Records, inside a host's training process, the wall time of each optimiser step, the peak
resident memory of the training phase, and the shape of each policy forward, then writes them
as JSON. Two times per step:

- ``interval_s``: from the previous optimiser step's end to this one's (the whole loop per
  step: data, forwards, backward, optimiser, logging); the benchmark's headline number;
- ``compute_s``: from this step's start (Axolotl: ``on_step_begin``; OpenRLHF: the policy's
  first forward) to the end of its optimiser step;
- ``cpu_s``: CPU time of the whole process (all threads, user + system) over ``interval_s``:
  the work done, much less sensitive than wall time to other processes on a shared machine
  (with one math thread; with more, threads waiting at a barrier may spin and count);
- ``load1``: the machine's 1-minute load average at the step's end.

Peak memory: the kernel's RSS high-water mark (``VmHWM``) is reset when training starts
(``/proc/self/clear_refs``), so ``peak_mib`` is the peak of the training steps alone, not of
model loading; where the reset is refused, it is the process peak so far (``hwm_reset`` says
which). Each step's ``peak_mib`` is the high-water mark at its end, so the last step's is the
peak over all training steps; ``peak_before_training_mib`` is the process's peak up to then
(model loading), so the larger of the two is the process's own peak (``ru_maxrss`` of
``RUSAGE_SELF``, without child processes such as a compiler DeepSpeed may start).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

__all__ = ["PROBE_FILE", "StepProbe", "StepProbeCallback"]

PROBE_FILE = "step_probe.json"  # what the Trainer-based hooks name their probe in the output folder
_MIB = 1024.0


def _status_kib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


class StepProbe:
    """Per-step wall times, training-phase peak RSS and policy input shapes of one process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.steps: list[dict[str, float | None]] = []
        self.shapes: list[list[int]] = []
        self.hwm_reset = False
        self.rss_at_start_mib: float | None = None
        self.peak_before_training_mib: float | None = None
        self._started = False
        self._step_start: float | None = None
        self._last_end: float | None = None
        self._last_cpu: float | None = None

    def start_training(self) -> None:
        """Call once when training starts: resets the RSS high-water mark."""
        if self._started:
            return
        self._started = True
        hwm = _status_kib("VmHWM")
        self.peak_before_training_mib = None if hwm is None else hwm / _MIB
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        rss = _status_kib("VmRSS")
        self.rss_at_start_mib = None if rss is None else rss / _MIB

    def step_begin(self) -> None:
        if self._step_start is None:
            self._step_start = time.perf_counter()
            if self._last_cpu is None:
                self._last_cpu = time.process_time()

    def step_end(self) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        start = self._step_start if self._step_start is not None else now
        previous = self._last_end if self._last_end is not None else start
        hwm, rss = _status_kib("VmHWM"), _status_kib("VmRSS")
        self.steps.append(
            {
                "interval_s": now - previous,
                "compute_s": now - start,
                "cpu_s": cpu - (self._last_cpu if self._last_cpu is not None else cpu),
                "load1": os.getloadavg()[0],
                "peak_mib": None if hwm is None else hwm / _MIB,
                "rss_mib": None if rss is None else rss / _MIB,
            }
        )
        self._last_end, self._last_cpu = now, cpu
        self._step_start = None

    def record_shape(self, shape: Any) -> None:
        self.shapes.append([int(s) for s in shape])

    def dump(self) -> None:
        payload = {
            "steps": self.steps,
            "policy_input_shapes": self.shapes,
            "hwm_reset": self.hwm_reset,
            "rss_at_start_mib": self.rss_at_start_mib,
            "peak_before_training_mib": self.peak_before_training_mib,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(payload, indent=1))


class StepProbeCallback(TrainerCallback):
    """Feeds a :class:`StepProbe` from an HF ``Trainer``'s events and writes it when training ends.

    It changes nothing in the run: no trainer method is wrapped; a forward pre-hook on the
    policy only reads the shape of its inputs (its training forwards, with grad enabled).
    """

    def __init__(self, path: str | Path) -> None:
        self.probe = StepProbe(path)
        self._hook: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.probe.start_training()
        if model is not None and self._hook is None:
            self._hook = model.register_forward_pre_hook(self._record_shape, with_kwargs=True)

    def _record_shape(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        import torch

        ids = args[0] if args else kwargs.get("input_ids")
        if ids is not None and torch.is_grad_enabled():
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


def train_probed(trainer: Any, ganpo: Any) -> None:
    """Train an HF ``Trainer`` built with a :class:`StepProbeCallback`, without its per-step log
    prints, with ``ganpo`` (a config, or ``None``: the plain host) attached, and save the
    regularizer state beside the model."""
    from transformers import PrinterCallback

    import ganpo_plugins

    trainer.remove_callback(PrinterCallback)  # no per-step log dicts in the log
    if ganpo is not None:
        ganpo_plugins.attach(trainer, ganpo)
    trainer.train()
    if ganpo is not None:
        trainer.save_model()  # writes ganpo_regularizer.pt beside the model
