"""The seams of a ``transformers.Trainer`` every attachment to one shares (TRL's DPO, CPO and
online DPO trainers, Axolotl's subclasses of them, a third party's): the regularizer built when
training begins, metrics into the trainer's own ``log`` (so they reach ``trainer_state.json`` and
every ``report_to``) and into what ``evaluate()`` returns, the state beside every checkpoint and
restored on resume, the step's accumulation facts from the accelerator, the reference a trainer
without one runs, and, for a trainer whose ``training_step`` calls ``accelerator.backward``
itself, the term added at that backward. A host adapter subclasses :class:`TrainerAttachment`,
gates its host's version and adds the wrappers of its loss path. Imports transformers: load it
only from an adapter."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import signal
import threading
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from accelerate.utils import is_peft_model
from torch import Tensor
from transformers import TrainerCallback

from ..config import RegularizerConfig
from ..regularizers.protocol import RegularizerContext, StepInfo
from .attachment import Attachment
from .runner import RegularizerRunner
from .taps import frozen_copy, hidden_size

__all__ = ["SaveOnInterrupt", "TrainerAttachment", "accelerator_data_parallel_group"]

logger = logging.getLogger(__name__)


class _BuildCallback(TrainerCallback):
    """Builds the regularizer when training begins (the number of optimiser steps is known)."""

    def __init__(self, attachment: TrainerAttachment) -> None:
        self.attachment = attachment

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.attachment.runner is None:
            self.attachment.build_runner(args, state)


class TrainerAttachment(Attachment):
    """A regularizer attached to one ``transformers.Trainer`` instance; ``runner`` is ``None``
    until training begins. ``host``: the host and version, for messages (set before ``__init__``)."""

    #: The host objects every trainer attachment changes (a subclass's ``WRAPPED`` lists these too).
    SHARED_WRAPPED: ClassVar[dict[str, str]] = {
        "trainer.log, .save_model, ._load_optimizer_and_scheduler, .evaluation_loop": "instance attributes removed",
        "trainer callbacks: one build callback": "removed",
        **Attachment.CORE_WRAPPED,
    }

    def __init__(self, trainer: Any, config: RegularizerConfig) -> None:
        super().__init__(trainer, config)
        self._resume_dir: str | None = None
        self.in_step = False  # True while a training step whose backward gets the term runs

    def install(self, wrappers: dict[str, Callable[..., Any]]) -> None:
        """Wrap the named trainer methods and the shared ones; add the build callback."""
        shared = {
            "log": self._log,
            "save_model": self._save_model,
            "_load_optimizer_and_scheduler": self._load,
            "evaluation_loop": self._evaluation_loop,
        }
        self.wrap(self.trainer, {**wrappers, **shared})
        self._callback = _BuildCallback(self)
        self.trainer.add_callback(self._callback)

    @abstractmethod
    def build_runner(self, args: Any, state: Any) -> None:
        """Build the runner when training begins: choose the tapped models, call :meth:`_start`."""

    def start_runner(self, args: Any, state: Any, *models: Any, ref: Any = None) -> None:
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
            process_group=accelerator_data_parallel_group(trainer.accelerator),
        )
        self.runner = RegularizerRunner(self.config, context, *models)
        self.runner.tap.enabled = False  # on only where the subclass captures (never in generation)
        if self._resume_dir is not None:
            self.runner.load(self._resume_dir)

    def step_info(self) -> StepInfo | None:
        """This micro-step's accumulation facts (``Trainer`` sets ``sync_gradients`` before each);
        ``None`` outside a training step (evaluation, or autograd off): no update then."""
        trainer = self.trainer
        if not (trainer.model.training and torch.is_grad_enabled()):
            return None
        accumulation = getattr(trainer, "current_gradient_accumulation_steps", trainer.args.gradient_accumulation_steps)
        return StepInfo(is_boundary=bool(trainer.accelerator.sync_gradients), accumulation_steps=int(accumulation))

    def captured(self, original: Callable[..., Any], *args: Any) -> Any:
        """``original(*args)`` with the tap recording; records of earlier forwards dropped first."""
        assert self.runner is not None
        self.runner.tap.take()
        with self.runner.tap.capturing():
            return original(*args)

    def choose_reference(self, ref_model: Any) -> Any:
        """The model the adapter's own reference forward runs, for a trainer that runs none:
        ``ref_model``, else the trainer's ``ref_model``, else ``None`` for a PEFT policy (the
        reference is the policy with its adapters disabled), else a frozen copy of the policy
        taken now — refused once training has begun (the policy is no longer the initial one) and
        under DeepSpeed ZeRO-3 (its weights are sharded)."""
        trainer = self.trainer
        if ref_model is not None or getattr(trainer, "ref_model", None) is not None:
            return ref_model if ref_model is not None else trainer.ref_model
        policy = trainer.accelerator.unwrap_model(trainer.model)
        if is_peft_model(policy):
            return None
        deepspeed = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        if trainer.state.global_step > 0 or (deepspeed is not None and deepspeed.zero_stage == 3):
            raise ValueError(
                "this trainer runs no reference forward and holds no reference model; the regularizer needs "
                "reference hidden states: pass ref_model= (the frozen initial policy) to the attach call"
            )
        logger.warning(
            "ganpo: %s runs no reference forward; using a frozen copy of the policy taken now as the reference "
            "(one more model in memory: pass ref_model= to choose it yourself)",
            type(trainer).__name__,
        )
        return frozen_copy(policy)

    def step_with_term(
        self, original: Callable[..., Any], args: tuple[Any, ...], term: Callable[[Tensor], Tensor]
    ) -> Tensor:
        """Run a ``training_step(*args)`` that calls ``accelerator.backward(loss)`` itself (it has no
        ``compute_loss`` to wrap), with that one backward given ``term(loss)`` instead of ``loss``;
        :attr:`in_step` is true meanwhile. Returns what ``Trainer.training_step`` returns (the loss
        detached, divided by the accumulation steps), the term included."""
        assert self.runner is not None
        backwards: list[Tensor] = []
        with self._backward_replaced(backwards, term):
            original(*args)
        if not backwards:
            raise RuntimeError(
                f"{self.host}: {type(self.trainer).__name__}.training_step did not call accelerator.backward; this "
                "version changed its training step"
            )
        return backwards[0].detach() / self.trainer.args.gradient_accumulation_steps

    @contextmanager
    def _backward_replaced(self, backwards: list[Tensor], term: Callable[[Tensor], Tensor]) -> Iterator[None]:
        accelerator = self.trainer.accelerator
        previous = vars(accelerator).get("backward")

        def backward(original: Callable[..., Any], loss: Tensor, **kwargs: Any) -> Any:
            if not backwards:  # the step's one policy backward
                backwards.append(term(loss))
                loss = backwards[0]
            return original(loss, **kwargs)

        accelerator.backward = functools.partial(backward, accelerator.backward)
        self.runner.tap.take()
        self.in_step = True
        try:
            yield
        finally:
            self.in_step = False
            self.runner.tap.take()
            if previous is None:
                vars(accelerator).pop("backward", None)
            else:
                accelerator.backward = previous

    def _log(self, original: Callable[..., Any], logs: dict[str, float], *args: Any, **kwargs: Any) -> Any:
        if self.runner is not None and "loss" in logs:  # a training log (evaluation logs carry eval_loss)
            logs.update(self.runner.pop_metrics("train", self.trainer.state.global_step))
        return original(logs, *args, **kwargs)

    def _save_model(self, original: Callable[..., Any], output_dir: str | None = None, *args: Any, **kw: Any) -> Any:
        if self.runner is not None:  # first: a checkpoint folder never holds a model without this state
            self.runner.save(output_dir or self.trainer.args.output_dir)
        return original(output_dir, *args, **kw)

    def _evaluation_loop(self, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        output = original(*args, **kwargs)
        if self.runner is not None:
            signature = inspect.signature(original)
            prefix = signature.bind(*args, **kwargs).arguments.get(
                "metric_key_prefix", signature.parameters["metric_key_prefix"].default
            )
            output.metrics.update({f"{prefix}_{k}": v for k, v in self.runner.pop_metrics("eval").items()})
        return output

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


def accelerator_data_parallel_group(accelerator: Any) -> Any:
    """The process group over which the batch differs (μ, discriminator gradients, metrics):
    accelerate's flattened ``dp`` mesh dimension (replicate × shard under HSDP; tensor- and
    context-parallel ranks see the same data) when the run has a device mesh with data-parallel
    dimensions, else ``None`` (every rank: DDP, plain FSDP, ZeRO)."""
    config = getattr(accelerator, "parallelism_config", None)
    mesh = getattr(accelerator, "torch_device_mesh", None)
    if config is None or mesh is None or not config.dp_dim_names:
        return None
    return mesh["dp"].get_group()
