"""LLaMA-Factory's ``deepspeed:`` key, ZeRO-2 and ZeRO-3, 2 CPU processes, through the real CLI as its
users launch a distributed run (``FORCE_TORCHRUN=1 NPROC_PER_NODE=2``: LLaMA-Factory's launcher starts
torchrun, which runs this package's entry in each process). On CPU: ``use_cpu: false`` (with ``use_cpu``
accelerate drops DeepSpeed and trains plain DDP); DeepSpeed then picks its CPU accelerator and gloo by
itself, and JIT-compiles its shared-memory comm op once (into TORCH_EXTENSIONS_DIR, kept by tox.ini).

Both ranks must hold the same discriminators and μ after every step (their gradients and μ are averaged
over the data-parallel group): each rank writes its own state (``ganpo.save_every_rank``), compared bit
for bit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("llamafactory.train.tuner", reason="needs LLaMA-Factory: tox -e llamafactory")
pytest.importorskip("deepspeed", reason="needs DeepSpeed: tox -e llamafactory")

import yaml
from state_equality import assert_states_equal

pytestmark = [pytest.mark.llamafactory, pytest.mark.slow]

STEPS = 3


def _zero_config(folder: Path, stage: int) -> Path:
    ds_config = {
        "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto", "zero_allow_untested_optimizer": True, "bf16": {"enabled": "auto"},
        "zero_optimization": {"stage": stage, "overlap_comm": False, "contiguous_gradients": True},
    }  # fmt: skip
    (folder / "ds.json").write_text(json.dumps(ds_config))
    return folder / "ds.json"


def _launch(folder: Path, name: str, cfg: dict[str, Any], host_env: dict[str, str]) -> str:
    """``FORCE_TORCHRUN=1 NPROC_PER_NODE=2 ganpo-llamafactory-cli train <name>.yaml``; its output."""
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    cli = str(Path(sys.executable).with_name("ganpo-llamafactory-cli"))
    env = {**host_env, "FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"}
    result = subprocess.run(
        [cli, "train", str(folder / f"{name}.yaml")], env=env, cwd=folder, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=900,
    )  # fmt: skip
    (folder / f"{name}.txt").write_text(result.stdout)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "Initializing 2 distributed tasks" in result.stdout  # LLaMA-Factory's own launcher started torchrun
    return result.stdout


def _rank_states(checkpoint: Path) -> list[dict[str, Any]]:
    return [torch.load(checkpoint / name, weights_only=True)["state"]
            for name in ("ganpo_regularizer.pt", "ganpo_regularizer.rank1.pt")]  # fmt: skip


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_on_two_processes_keeps_the_regularizer_identical_on_both_ranks(
    stage: int, lf_cfg: Callable[..., Any], lf_workdir: Path, host_env: dict[str, str]
) -> None:
    folder = lf_workdir / f"zero{stage}"
    folder.mkdir()
    overrides = {"use_cpu": False, "deepspeed": str(_zero_config(folder, stage)), "max_steps": STEPS,
                 "save_steps": STEPS, "ganpo": {"save_every_rank": True}}  # fmt: skip
    cfg = lf_cfg(f"zero{stage}", overrides)
    _launch(folder, "cfg", cfg, host_env)

    checkpoint = Path(cfg["output_dir"]) / f"checkpoint-{STEPS}"
    assert (checkpoint / f"global_step{STEPS}").is_dir()  # a DeepSpeed checkpoint: the run was DeepSpeed's
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    history = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(history) == STEPS and all("ganpo/adv_loss" in entry for entry in history)
    ranks = _rank_states(checkpoint)
    assert ranks[0]["disc_steps"] == ranks[1]["disc_steps"] == STEPS
    for key in ("discriminators", "mu", "optimizers"):
        assert_states_equal(ranks[0][key], ranks[1][key], key)


def test_lora_under_zero2_resumes_from_the_deepspeed_checkpoint_as_if_never_stopped(
    lf_cfg: Callable[..., Any], lf_workdir: Path, host_env: dict[str, str]
) -> None:
    """LoRA (reference: the adapter-disabled pass) under ZeRO-2 on 2 processes, 4 steps with a DeepSpeed
    checkpoint at 2 and 4; then a second run resumed from a copy of checkpoint 2. At step 4 both ranks
    of the resumed run hold the uninterrupted run's regularizer state bit for bit (discriminators, μ,
    optimisers, RNG), and steps 3 and 4 logged the same losses."""
    folder = lf_workdir / "zero2-lora"
    folder.mkdir()
    overrides = {"use_cpu": False, "deepspeed": str(_zero_config(folder, 2)), "finetuning_type": "lora",
                 "lora_target": "all", "max_steps": 4, "save_steps": 2, "ganpo": {"save_every_rank": True}}  # fmt: skip
    whole = lf_cfg("zero2-lora", overrides)
    log = _launch(folder, "whole", whole, host_env)
    assert "reference: LLaMA-Factory's adapter-disabled pass" in log
    done = Path(whole["output_dir"])
    assert (done / "checkpoint-2" / "global_step2").is_dir()

    resumed = {**whole, "output_dir": str(folder / "resumed")}
    shutil.copytree(done / "checkpoint-2", folder / "resumed" / "checkpoint-2")
    _launch(
        folder, "resumed", {**resumed, "resume_from_checkpoint": str(folder / "resumed" / "checkpoint-2")}, host_env
    )
    ranks = zip(_rank_states(folder / "resumed" / "checkpoint-4"), _rank_states(done / "checkpoint-4"), strict=True)
    for ours, theirs in ranks:
        assert ours["disc_steps"] == 4
        assert_states_equal(ours, theirs)

    def losses(out: Path) -> list[float]:
        state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
        return [entry["loss"] for entry in state["log_history"] if "loss" in entry][-2:]

    assert losses(folder / "resumed") == losses(done)
