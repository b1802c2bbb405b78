"""What every TRL trainer attachment shares (offline DPO/CPO and online DPO): the version gate,
one attachment per trainer, instance wrappers installed and removed, the regularizer built when
training begins, metrics into the trainer's own ``log``, the state beside every checkpoint and
restored on resume. A subclass adds the wrappers of its trainer's loss path."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from transformers import TrainerCallback

from ganpo_plugins import RegularizerConfig, RegularizerContext, RegularizerRunner
from ganpo_plugins.hosts import require_host
from ganpo_plugins.taps import hidden_size

__all__ = ["TrainerAttachment"]

Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]


class _BuildCallback(TrainerCallback):
    """Builds the regularizer when training begins (the number of optimiser steps is known)."""

    def __init__(self, attachment: TrainerAttachment) -> None:
        self.attachment = attachment

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.attachment._build(args, state)


class TrainerAttachment(ABC):
    """A regularizer attached to one TRL trainer instance. ``runner`` is ``None`` until training
    begins. Subclasses call :meth:`_install` with their own wrappers and implement ``_build``."""

    #: The host objects every TRL attachment changes (a subclass's ``WRAPPED`` lists these too).
    SHARED_WRAPPED: ClassVar[dict[str, str]] = {
        "trainer.log, trainer.save_model, trainer._load_optimizer_and_scheduler": "instance attributes removed",
        "trainer callbacks: one build callback": "removed",
        "trainer._ganpo_attachment (marks the trainer as attached)": "removed",
        "forward hooks on the decoder bodies of policy and reference": "removed",
    }

    def __init__(self, trainer: Any, config: RegularizerConfig) -> None:
        self.trl_version = require_host("trl")
        if getattr(trainer, "_ganpo_attachment", None) is not None:
            raise ValueError(
                f"a regularizer is already attached to this {type(trainer).__name__}; attaching a second one would "
                "add its term twice: call detach() on the first handle before attaching again"
            )
        self.trainer = trainer
        self.config = config
        self.runner: RegularizerRunner | None = None
        self._resume_dir: str | None = None
        self._originals: dict[str, Callable[..., Any]] = {}

    def _install(self, wrappers: dict[str, Wrapper]) -> None:
        """Wrap the named trainer methods (and the shared ones) on the instance, add the build
        callback, and mark the trainer as attached."""
        trainer = self.trainer
        wrappers = {
            **wrappers,
            "log": self._wrap_log,
            "save_model": self._wrap_save_model,
            "_load_optimizer_and_scheduler": self._wrap_load_optimizer,
        }
        missing = [name for name in wrappers if not callable(getattr(trainer, name, None))]
        if missing:
            raise TypeError(
                f"trl {self.trl_version}: {type(trainer).__name__} has no {', '.join(missing)}, which the ganpo TRL "
                "adapter wraps; this TRL version changed its trainer (see `python -m ganpo_plugins doctor` for the "
                "tested versions)"
            )
        for name, make in wrappers.items():
            self._originals[name] = getattr(trainer, name)
            setattr(trainer, name, make(self._originals[name]))
        self._callback = _BuildCallback(self)
        trainer.add_callback(self._callback)
        trainer._ganpo_attachment = self

    @abstractmethod
    def _build(self, args: Any, state: Any) -> None:
        """Build the runner when training begins (the build callback calls this); typically by
        choosing the tapped models and calling :meth:`_start`."""

    def _start(self, args: Any, state: Any, *models: Any, ref: Any = None) -> None:
        """Build the runner over ``models`` (the tapped ones) once training begins; restore the state
        of the checkpoint the run resumes from. ``ref``: the reference, for its hidden size."""
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

    # -- logging, checkpoints -------------------------------------------------------------------

    def _wrap_log(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def log(logs: dict[str, float], *args: Any, **kwargs: Any) -> Any:
            if self.runner is not None and "loss" in logs:  # a training log (evaluation logs carry eval_loss)
                logs.update(self.runner.pop_metrics("train", self.trainer.state.global_step))
            return original(logs, *args, **kwargs)

        return log

    def _wrap_save_model(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def save_model(output_dir: str | None = None, *args: Any, **kwargs: Any) -> Any:
            # Written first: a checkpoint folder never holds a model without its regularizer state.
            if self.runner is not None:
                self.runner.save(output_dir or self.trainer.args.output_dir)
            return original(output_dir, *args, **kwargs)

        return save_model

    def _wrap_load_optimizer(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def _load_optimizer_and_scheduler(checkpoint: str | None) -> Any:
            result = original(checkpoint)
            if checkpoint is not None:
                self._resume_dir = os.fspath(checkpoint)
                if self.runner is not None:
                    self.runner.load(self._resume_dir)
            return result

        return _load_optimizer_and_scheduler

    # -- public --------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the regularizer state into ``directory`` (what every checkpoint gets)."""
        if self.runner is None:
            raise RuntimeError("the regularizer is built when training begins; nothing to save yet")
        self.runner.save(directory)

    def detach(self) -> None:
        """Undo everything in ``WRAPPED``: the trainer is as it was before the attach."""
        trainer = self.trainer
        for name in self._originals:
            trainer.__dict__.pop(name, None)
        self._originals.clear()
        trainer.remove_callback(self._callback)
        if trainer.__dict__.get("_ganpo_attachment") is self:
            del trainer._ganpo_attachment
        if self.runner is not None:
            self.runner.close()


def data_parallel_group(accelerator: Any) -> Any:
    """The process group over which the batch differs, for the regularizer's reductions (μ,
    discriminator gradients, metrics): accelerate's flattened ``dp`` mesh dimension (replicate
    × shard under HSDP; tensor- and context-parallel ranks see the same data) when the run has
    a device mesh with data-parallel dimensions, else ``None`` (every rank: DDP, plain FSDP,
    ZeRO)."""
    config = getattr(accelerator, "parallelism_config", None)
    mesh = getattr(accelerator, "torch_device_mesh", None)
    if config is None or mesh is None or not config.dp_dim_names:
        return None
    return mesh["dp"].get_group()
