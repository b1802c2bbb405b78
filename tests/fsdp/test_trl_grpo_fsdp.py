"""GRPO + GANPO under FSDP2 through the real TRL/accelerate path, two processes on CPU (gloo,
``cpu_fsdp_shim``): the policy really sharded, TRL's own reference (β > 0, sharded by TRL) or the
adapter-disabled LoRA policy (β = 0) as the regularizer's reference, ``ganpo/*`` logged every step,
and both ranks ending with the same discriminators, μ and optimiser state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from state_equality import assert_states_equal

pytest.importorskip("trl", reason="needs TRL: tox -e trl-oldest / trl-newest")
pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
RUNS = [{"name": "full-kl", "lora": False, "beta": 0.04}, {"name": "lora", "lora": True, "beta": 0.0}]
SHARED = ("discriminators", "optimizers", "mu", "mu_initialized", "disc_steps", "policy_steps")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_assets: Path, host_env: dict[str, str]) -> Path:
    out = tmp_path_factory.mktemp("grpo-fsdp")
    path = [str(HERE / "cpu_fsdp_shim"), str(HERE), host_env.get("PYTHONPATH")]
    env = {**host_env, "PYTHONPATH": os.pathsep.join(filter(None, path))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "trl_grpo_fsdp_worker.py"), str(tiny_assets), str(out), json.dumps(RUNS)]  # fmt: skip
    result = subprocess.run(cmd, env=env, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=400)  # fmt: skip
    (out / "log.txt").write_text(result.stdout)
    assert result.returncode == 0, result.stdout[-6000:]
    return out


@pytest.mark.parametrize("run", RUNS, ids=[run["name"] for run in RUNS])
def test_grpo_under_fsdp2_keeps_ranks_identical(trained: Path, run: dict[str, Any]) -> None:
    results = [json.loads((trained / run["name"] / f"result.rank{r}.json").read_text()) for r in (0, 1)]
    for result in results:
        assert result["policy"] == "fsdp2"
        if run["beta"]:
            assert result["ref_model"] == "fsdp2" and result["reference"] == "fsdp2"  # TRL's, sharded by TRL
        else:
            assert result["reference"] is None  # the adapter-disabled LoRA policy
    logs = [entry for entry in results[0]["log_history"] if "loss" in entry]
    assert len(logs) == 2 and all("ganpo/completions_pos" in entry and "ganpo/term_skipped" in entry for entry in logs)
    checkpoint = trained / run["name"] / "checkpoint-2"
    states = [
        torch.load(checkpoint / name, weights_only=True)["state"]
        for name in ("ganpo_regularizer.pt", "ganpo_regularizer.rank1.pt")
    ]
    assert [s["policy_steps"] for s in states] == [2, 2]
    for key in SHARED:
        assert_states_equal(states[0][key], states[1][key], key)
