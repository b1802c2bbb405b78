"""The ganpo_plugins host adapter for :class:`MiniDPOLoop`, registered as ``minidpo`` under the
entry-point group ``ganpo_plugins.hosts``: ``ganpo_plugins.attach(loop, config)`` finds it.

It changes attributes of the one loop instance and nothing else (:attr:`MiniDPOAttachment.WRAPPED`;
the core's :class:`~ganpo_plugins.adapter_kit.Attachment` keeps the ledger ``detach()`` undoes);
:class:`ganpo_plugins.RegularizerRunner` does the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor

from ganpo_plugins import (
    LatentBatch,
    PairLogps,
    RegularizerConfig,
    RegularizerContext,
    RegularizerRunner,
    StepInfo,
    hookimpl,
)
from ganpo_plugins.adapter_kit import Attachment, hidden_size

from .loop import Batch, MiniDPOLoop


@hookimpl
def ganpo_attach(trainer: Any, config: RegularizerConfig, options: Mapping[str, Any]) -> MiniDPOAttachment | None:
    if not isinstance(trainer, MiniDPOLoop):
        return None  # not ours: another adapter may claim it
    if options:
        raise TypeError(f"the minidpo adapter takes no options, got {sorted(options)}")
    return MiniDPOAttachment(trainer, config)


class MiniDPOAttachment(Attachment):
    host = "minidpo"
    WRAPPED: ClassVar[dict[str, str]] = {
        "loop.loss: adds the weighted term": "instance attribute removed",
        "loop.objective: the configured preference_loss (only when set)": "instance attribute removed",
        "loop.log: adds the ganpo/* metrics": "instance attribute removed",
        "loop.save, loop.load: the regularizer state beside the loop's": "instance attributes removed",
        **Attachment.CORE_WRAPPED,
    }

    def __init__(self, loop: MiniDPOLoop, config: RegularizerConfig) -> None:
        super().__init__(loop, config)  # refuses a loop that already has a regularizer attached
        context = RegularizerContext(
            hidden_size=hidden_size(loop.policy),
            policy_lr=loop.lr,
            total_steps=loop.max_steps,
            accumulation_steps=loop.accumulation_steps,
            device=next(loop.policy.parameters()).device,
        )
        # Tap order: source 0 is the policy, source 1 the reference.
        self.runner = RegularizerRunner(config, context, loop.policy, loop.reference)
        self.preference = self.runner.preference_loss()
        wrappers: dict[str, Callable[..., Any]] = {
            "loss": self._loss,
            "log": self._log,
            "save": self._save,
            "load": self._load,
        }
        if self.preference is not None:
            wrappers["objective"] = self._objective
        self.wrap(loop, wrappers)  # each called as wrapper(original, *args)

    def _loss(self, original: Callable[[Batch], Tensor], batch: Batch) -> Tensor:
        self.runner.tap.take()  # drop records of forwards run outside the loss
        value = original(batch)  # the loop's own forwards fill the tap
        policy, reference = self.runner.latents()
        latents = LatentBatch.from_concatenated(policy, reference, batch["attention_mask"], batch["response_mask"])
        info = StepInfo(is_boundary=self.trainer.is_boundary, accumulation_steps=self.trainer.accumulation_steps)
        return value + self.runner.step(latents, info)

    def _objective(self, original: Callable[..., Tensor], pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> Tensor:
        return self.preference(PairLogps(pc, pr, rc, rr), self.trainer.beta, self.config.simpo_gamma)

    def _log(self, original: Callable[[dict[str, float]], None], entry: dict[str, float]) -> None:
        original({**entry, **self.runner.pop_metrics("train", step=int(entry["step"]))})

    def _save(self, original: Callable[[str | Path], None], directory: str | Path) -> None:
        self.runner.save(directory)  # first: a checkpoint never holds the policy without it
        original(directory)

    def _load(self, original: Callable[[str | Path], None], directory: str | Path) -> None:
        original(directory)
        self.runner.load(directory)
