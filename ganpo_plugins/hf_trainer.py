"""The seams of a ``transformers.Trainer`` every attachment to one shares (TRL's DPO, CPO and
online DPO trainers, Axolotl's subclasses of them, a third party's): the regularizer built when
training begins, metrics into the trainer's own ``log`` (so they reach ``trainer_state.json`` and
every ``report_to``), the state beside every checkpoint and restored on resume, the step's
accumulation facts from the accelerator. A host adapter subclasses :class:`TrainerAttachment`,
gates its host's version and adds the wrappers of its loss path. Imports transformers: load it
only from an adapter."""

from __future__ import annotations

import os
import signal
import threading
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from transformers import TrainerCallback

from .attachment import Attachment
from .config import RegularizerConfig
from .protocol import RegularizerContext, StepInfo
from .runner import RegularizerRunner
from .taps import hidden_size

__all__ = ["SaveOnInterrupt", "TrainerAttachment", "data_parallel_group"]


class _BuildCallback(TrainerCallback):
    """Builds the regularizer when training begins (the number of optimiser steps is known)."""

    def __init__(self, attachment: TrainerAttachment) -> None:
        self.attachment = attachment

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.attachment.runner is None:
            self.attachment._build(args, state)


class TrainerAttachment(Attachment):
    """A regularizer attached to one ``transformers.Trainer`` instance; ``runner`` is ``None``
    until training begins. ``host``: the host and version, for messages (set before ``__init__``)."""

    #: The host objects every trainer attachment changes (a subclass's ``WRAPPED`` lists these too).
    SHARED_WRAPPED: ClassVar[dict[str, str]] = {
        "trainer.log, trainer.save_model, trainer._load_optimizer_and_scheduler": "instance attributes removed",
        "trainer callbacks: one build callback": "removed",
        **Attachment.CORE_WRAPPED,
    }

    def __init__(self, trainer: Any, config: RegularizerConfig) -> None:
        super().__init__(trainer, config)
        self._resume_dir: str | None = None

    def _install(self, wrappers: dict[str, Callable[..., Any]]) -> None:
        """Wrap the named trainer methods and the shared ones; add the build callback."""
        shared = {"log": self._log, "save_model": self._save_model, "_load_optimizer_and_scheduler": self._load}
        self._wrap(self.trainer, {**wrappers, **shared})
        self._callback = _BuildCallback(self)
        self.trainer.add_callback(self._callback)

    @abstractmethod
    def _build(self, args: Any, state: Any) -> None:
        """Build the runner when training begins: choose the tapped models, call :meth:`_start`."""

    def _start(self, args: Any, state: Any, *models: Any, ref: Any = None) -> None:
        """Build the runner over ``models`` (the tapped ones); restore the state of the checkpoint
        the run resumes from. ``ref``: the reference, for its hidden size."""
        trainer = self.trainer
        context = RegularizerContext(
            hidden_size=hidden_size(trainer.model),
            policy_lr=args.learning_rate,
            total_steps=state.max_steps,
            warmup_steps=args.get_warmup_steps(state.max_steps),
            accumulation_steps=args.gradient_accumulation_steps,
            ref_hidden_size=None if ref is None else hidden_size(ref),
            device=trainer.accelerator.device,
            seed=args.seed,
            process_group=data_parallel_group(trainer.accelerator),
        )
        self.runner = RegularizerRunner(self.config, context, *models)
        self.runner.tap.enabled = False  # on only where the subclass captures (never in generation)
        if self._resume_dir is not None:
            self.runner.load(self._resume_dir)

    def _step_info(self) -> StepInfo:
        """This micro-step's accumulation facts (``Trainer`` sets ``sync_gradients`` before each)."""
        trainer = self.trainer
        accumulation = getattr(trainer, "current_gradient_accumulation_steps", trainer.args.gradient_accumulation_steps)
        return StepInfo(is_boundary=bool(trainer.accelerator.sync_gradients), accumulation_steps=int(accumulation))

    def _log(self, original: Callable[..., Any], logs: dict[str, float], *args: Any, **kwargs: Any) -> Any:
        if self.runner is not None and "loss" in logs:  # a training log (evaluation logs carry eval_loss)
            logs.update(self.runner.pop_metrics("train", self.trainer.state.global_step))
        return original(logs, *args, **kwargs)

    def _save_model(self, original: Callable[..., Any], output_dir: str | None = None, *args: Any, **kw: Any) -> Any:
        if self.runner is not None:  # first: a checkpoint folder never holds a model without this state
            self.runner.save(output_dir or self.trainer.args.output_dir)
        return original(output_dir, *args, **kw)

    def _load(self, original: Callable[..., Any], checkpoint: str | None) -> Any:
        result = original(checkpoint)
        if checkpoint is not None:
            self._resume_dir = os.fspath(checkpoint)
            if self.runner is not None:
                self.runner.load(self._resume_dir)
        return result

    def detach(self) -> None:
        self.trainer.remove_callback(self._callback)
        super().detach()


class SaveOnInterrupt(TrainerCallback):
    """While training runs, a SIGINT first calls ``save()``, then the handler that was installed
    (a host's own, e.g. Axolotl's: save the model and exit); the previous handler is restored when
    training ends. Only the main thread of process 0 can install a signal handler."""

    def __init__(self, save: Callable[[], Any]) -> None:
        self.save = save
        self.previous: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if threading.current_thread() is threading.main_thread() and args.process_index == 0:
            self.previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.save()
        if not callable(self.previous):
            raise KeyboardInterrupt
        self.previous(signum, frame)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


def data_parallel_group(accelerator: Any) -> Any:
    """The process group over which the batch differs (μ, discriminator gradients, metrics):
    accelerate's flattened ``dp`` mesh dimension (replicate × shard under HSDP; tensor- and
    context-parallel ranks see the same data) when the run has a device mesh with data-parallel
    dimensions, else ``None`` (every rank: DDP, plain FSDP, ZeRO)."""
    config = getattr(accelerator, "parallelism_config", None)
    mesh = getattr(accelerator, "torch_device_mesh", None)
    if config is None or mesh is None or not config.dp_dim_names:
        return None
    return mesh["dp"].get_group()
