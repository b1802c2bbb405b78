"""GRPO + GANPO under two data-parallel processes (``torchrun --nproc_per_node 2`` on the GRPO
example, ``use_cpu``, gloo): each rank trains on its own prompts and samples, so its sides have sizes
of their own (and may be empty on one rank only); every rank still ends with the same
discriminators, running means μ and optimiser state, bit for bit, one discriminator step per
policy step."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from state_equality import assert_states_equal

pytest.importorskip("trl.trainer", reason="needs TRL: tox -e trl-oldest / trl-newest")
pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
GANPO = {"save_every_rank": True, "discriminator": {"d_model": 32, "num_heads": 4, "ffn_size": 64}}
# skipped_updates counts this rank's micro-batches with an empty side: it may differ between ranks.
SHARED = ("discriminators", "optimizers", "mu", "mu_initialized", "disc_steps", "policy_steps")


def test_every_rank_holds_the_same_regularizer(tmp_path: Path, tiny_assets: Path, run_cli: Callable[..., Any]) -> None:
    out = tmp_path / "out"
    args = [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "examples/trl/grpo_ganpo.py"),
        "--model_name_or_path", str(tiny_assets / "model"), "--dataset", str(tiny_assets / "prefs.jsonl"),
        "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", "4",
        "--num_generations", "4", "--max_completion_length", "8", "--gradient_accumulation_steps", "2",
        "--logging_steps", "1", "--save_steps", "4", "--use_cpu", "--report_to", "none", "--seed", "0",
        "--beta", "0.04", "--ganpo", json.dumps(GANPO),
    ]  # fmt: skip
    result = run_cli(args, log=tmp_path / "log.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
    checkpoint = out / "checkpoint-4"
    states = [
        torch.load(checkpoint / name, weights_only=True)["state"]
        for name in ("ganpo_regularizer.pt", "ganpo_regularizer.rank1.pt")
    ]
    assert [s["disc_steps"] for s in states] == [4, 4]  # one discriminator step per policy step
    for key in SHARED:
        assert_states_equal(states[0][key], states[1][key], key)
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    logged = [entry for entry in history if "ganpo/completions_pos" in entry]
    assert len(logged) == 4
