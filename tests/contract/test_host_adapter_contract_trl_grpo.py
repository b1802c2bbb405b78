"""The host-adapter contract (host_harness.py) on TRL's GRPOTrainer (the TRL envs): one micro-batch is
one prompt's group of completions, whose advantage signs make the unpaired sides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from contract.host_harness import HostAdapterContract, HostHarness, Run, TRLHarness


def letter_e(prompts: list[Any], completions: list[str], **kwargs: Any) -> list[float]:
    return [float(c.count("e")) for c in completions]


class TRLGRPOHarness(TRLHarness):
    """TRL's GRPOTrainer at β = 0 (the adapter's reference: a frozen copy of the initial policy), one
    prompt × 4 completions per micro-batch."""

    def build(self, run: Run) -> Any:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM
        from trl import GRPOConfig, GRPOTrainer
        from trl_args import rl_args

        spec = run.spec
        args = rl_args(
            run.workdir,
            GRPOConfig,
            4,
            max_steps=spec.steps,
            gradient_accumulation_steps=spec.accumulation,
            **self.saving(spec),
        )
        prompts = Dataset.from_dict({"prompt": self.pairs["prompt"]})
        model = AutoModelForCausalLM.from_pretrained(self.model_dir)
        return GRPOTrainer(
            model, reward_funcs=letter_e, args=args, train_dataset=prompts, processing_class=self.tokenizer
        )


class TestTRLGRPOTrainer(HostAdapterContract):
    # GRPO trains on its own advantage-weighted loss: no preference loss to replace (refused, test_grpo.py).
    test_gpo_kind_is_the_base_loss = None

    @pytest.fixture(scope="class")
    @classmethod
    def harness(cls, tiny_assets: Path) -> HostHarness:
        return TRLGRPOHarness(tiny_assets)
