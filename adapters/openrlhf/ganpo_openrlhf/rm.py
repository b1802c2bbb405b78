"""APO (arXiv 2311.08045) in OpenRLHF 0.11.2's reward-model trainer.

The reward model trains on a dataset mixing human preference pairs and APO pairs (the golden
response preferred over a sample of the current LLM), rows ``{"prompt", "chosen", "rejected",
"is_apo": bool}``, with ``L_RM = c_human · BT(human) + (c_apo / k) · BT(APO)``
(:func:`ganpo_plugins.formulas.functional.apo_rm_loss`) in place of OpenRLHF's pairwise loss.

Two seams, both subclasses the launcher puts in the base classes' places:

- :class:`APORewardDataset` keeps each row's ``is_apo`` flag in the per-row slot OpenRLHF's
  reward dataset fills with the optional ``margin`` (OpenRLHF drops every other column);
- :class:`APORewardModelTrainer` makes the host pass that slot to its loss (as it does for
  margins) and replaces the loss by APO's, in training and evaluation alike. It adds
  ``apo/human_loss``, ``apo/apo_loss`` and the share of APO pairs to OpenRLHF's ``logs_dict``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from openrlhf.datasets import RewardDataset
from openrlhf.trainer.rm_trainer import RewardModelTrainer

from ganpo_plugins.adapter_kit import bradley_terry_loss
from ganpo_plugins.apo import APOSettings
from ganpo_plugins.apo.batch import IS_APO, row_is_apo

__all__ = ["IS_APO", "APORewardDataset", "APORewardModelTrainer"]


class APORewardDataset(RewardDataset):
    """OpenRLHF's reward dataset, with the row's ``is_apo`` flag (absent: a human pair) as its extra."""

    def process_data(self, data: dict[str, Any]) -> dict[str, Any]:
        row = super().process_data(data)
        if not self.is_dpo:
            where = f"the row with prompt {str(data.get(self.prompt_key or 'prompt'))[:60]!r}"
            row["extra"] = float(row_is_apo(data, where))
        return row


class APORewardModelTrainer(RewardModelTrainer):
    """OpenRLHF's RewardModelTrainer with the APO loss configured by ``args.apo``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.apo: APOSettings = self.args.apo
        # The host passes each row's extra to its loss only for margins; ours carry is_apo.
        self.margin_loss = True
        self.loss_fn = self._loss
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self.strategy.print(f"apo: {self.apo.describe()}")

    def _loss(self, chosen_reward: torch.Tensor, reject_reward: torch.Tensor, is_apo: torch.Tensor) -> torch.Tensor:
        is_apo = is_apo.to(chosen_reward.device).bool()
        if torch.is_grad_enabled():
            with torch.no_grad():
                bt = bradley_terry_loss(chosen_reward.float(), reject_reward.float())
                for name, rows in (("human_loss", ~is_apo), ("apo_loss", is_apo)):
                    if bool(rows.any()):
                        self._sums[name] += bt[rows].mean().item()
                        self._counts[name] += 1
                self._sums["apo_share"] += is_apo.float().mean().item()
                self._counts["apo_share"] += 1
        return self.apo.rm_loss(chosen_reward, reject_reward, is_apo)

    def save_logs_and_checkpoints(self, args, global_step, step_bar, logs_dict=None, client_states=None):
        logs_dict = {} if logs_dict is None else logs_dict
        logs_dict.update({f"apo/{k}": self._sums[k] / self._counts[k] for k in self._sums})
        self._sums.clear()
        self._counts.clear()
        super().save_logs_and_checkpoints(args, global_step, step_bar, logs_dict, client_states)
