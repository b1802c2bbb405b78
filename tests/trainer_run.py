"""A finished run of a host CLI built on ``transformers.Trainer`` (Axolotl's, LLaMA-Factory's), as the
host tests read it: exit code, output, output folder and the files the trainer wrote there."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The metrics every GANPO training step logs, on every host.
GANPO_METRICS = {"ganpo/adv_loss", "ganpo/d_pos/loss", "ganpo/d_neg/loss", "ganpo/d_pos/accuracy", "ganpo/skipped"}


@dataclass
class TrainerRun:
    """One finished CLI run: exit code, combined output, output folder, its config."""

    returncode: int
    log: str
    out: Path
    cfg: dict[str, Any]

    def checkpoint(self, step: int | None = None) -> Path:
        """``checkpoint-<step>`` (default: the last one)."""
        if step is None:
            step = max(int(p.name.split("-")[1]) for p in self.out.glob("checkpoint-*"))
        return self.out / f"checkpoint-{step}"

    def history(self) -> list[dict[str, Any]]:
        """Per-step training logs from the last checkpoint's ``trainer_state.json``."""
        state = json.loads((self.checkpoint() / "trainer_state.json").read_text())
        return [entry for entry in state["log_history"] if "loss" in entry]

    def regularizer_state(self, step: int | None = None) -> dict[str, Any]:
        """``ganpo_regularizer.pt`` of ``checkpoint-<step>`` (default: the last checkpoint)."""
        import torch

        return torch.load(self.checkpoint(step) / "ganpo_regularizer.pt", weights_only=True)

    def assert_ok(self) -> None:
        assert self.returncode == 0, self.log[-4000:]

    def assert_trained(self, steps: int) -> None:
        """The run ended well after ``steps`` logged steps, each with :data:`GANPO_METRICS`, and as many
        discriminator updates in ``checkpoint-<steps>``."""
        self.assert_ok()
        history = self.history()
        assert len(history) == steps
        for entry in history:
            assert GANPO_METRICS <= entry.keys(), sorted(entry)
        assert self.regularizer_state(steps)["state"]["disc_steps"] == steps
