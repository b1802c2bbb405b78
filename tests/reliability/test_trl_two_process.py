"""Two data-parallel processes through the TRL path (``torchrun --nproc_per_node 2`` on the TRL
example, ``DPOConfig(use_cpu=True)``, gloo): every rank ends with the same discriminators,
running means μ and discriminator optimiser state, bit for bit, although each rank trained
on different pairs; and a 2-process run resumed from a checkpoint saved with the default
settings (one state file) ends bit-identical to an uninterrupted one; a control run without the
regularizer's cross-rank sync ends with ranks that differ. (Axolotl itself cannot load a model under
torchrun on CPU; DESIGN.md.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from state_equality import assert_states_equal

pytest.importorskip("trl.trainer", reason="needs TRL: tox -e trl-oldest / trl-newest")
pytestmark = [pytest.mark.axolotl, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
GANPO = {"save_every_rank": True, "discriminator": {"d_model": 32, "num_heads": 4, "ffn_size": 64}}
SHARED = ("discriminators", "optimizers", "mu", "mu_initialized", "disc_steps", "skipped_updates")


def _two_processes(
    tiny_assets: Path, out: Path, ganpo: dict[str, Any], *extra: str, shim: bool = False, worker: tuple[str, ...] = ()
) -> list[str]:
    script = [str(REPO / "tests/reliability/cpu_ddp_resume_shim.py")] if shim else list(worker)
    return [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        *script, str(REPO / "examples/trl/dpo_ganpo.py"),
        "--model_name_or_path", str(tiny_assets / "model"), "--dataset", str(tiny_assets / "prefs.jsonl"),
        "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "2", "--logging_steps", "1", "--use_cpu",
        "--report_to", "none", "--max_length", "64", "--seed", "0", "--ganpo", json.dumps(ganpo), *extra,
    ]  # fmt: skip


def run_two_ranks(tmp_path: Path, assets: Path, run_cli: Callable[..., Any], *worker: str) -> list[dict[str, Any]]:
    """The TRL example on two ranks (``worker``: a script that runs it); each rank's final state."""
    out = tmp_path / "out"
    args = _two_processes(assets, out, GANPO, "--save_steps", "4", worker=worker)
    result = run_cli(args, log=tmp_path / "log.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
    checkpoint = out / "checkpoint-4"
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    assert sum("ganpo/adv_loss" in entry for entry in history) == 4
    return [
        torch.load(checkpoint / name, weights_only=True)["state"]
        for name in ("ganpo_regularizer.pt", "ganpo_regularizer.rank1.pt")
    ]


def test_every_rank_holds_the_same_regularizer(tmp_path: Path, tiny_assets: Path, run_cli: Callable[..., Any]) -> None:
    states = run_two_ranks(tmp_path, tiny_assets, run_cli)
    assert [s["disc_steps"] for s in states] == [4, 4]  # one discriminator step per policy step
    for key in SHARED:
        assert_states_equal(states[0][key], states[1][key], key)
    assert [s["rank_resyncs"] for s in states] == [0, 0]  # kept equal by the sync, not repaired by the drift check


def test_control_without_the_sync_the_ranks_diverge(
    tmp_path: Path, tiny_assets: Path, run_cli: Callable[..., Any]
) -> None:
    """The same run with the regularizer's cross-rank sync switched off (without_rank_sync.py): each
    rank trained on different pairs, so its discriminators and μ differ, which the test above rules out."""
    states = run_two_ranks(tmp_path, tiny_assets, run_cli, str(Path(__file__).with_name("without_rank_sync.py")))
    assert [s["disc_steps"] for s in states] == [4, 4]
    for key in ("discriminators", "mu"):
        with pytest.raises(AssertionError):
            assert_states_equal(states[0][key], states[1][key], key)


def test_a_resume_from_the_default_state_file_continues_every_rank_exactly(
    tmp_path: Path, tiny_assets: Path, run_cli: Callable[..., Any]
) -> None:
    """Saved with the defaults (rank 0 writes the state, ``save_every_rank`` off), stopped after
    step 2 and resumed, a 2-process run ends as the uninterrupted one does, bit for bit: each rank
    continues its own discriminator random stream (dropout), not rank 0's."""
    ganpo = {key: value for key, value in GANPO.items() if key != "save_every_rank"}
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    result = run_cli(_two_processes(tiny_assets, whole, ganpo, "--save_steps", "2"), log=tmp_path / "whole.txt")
    assert result.returncode == 0, result.stdout[-4000:]
    args = _two_processes(
        tiny_assets,
        resumed,
        ganpo,
        "--save_steps",
        "4",
        "--resume_from_checkpoint",
        str(whole / "checkpoint-2"),
        shim=True,
    )
    result = run_cli(args, log=tmp_path / "resumed.txt")
    assert result.returncode == 0, result.stdout[-4000:]
    saved = whole / "checkpoint-2"
    assert not (saved / "ganpo_regularizer.rank1.pt").exists()  # the default: one whole state, rank 0's
    # Rank 1 drew other dropout masks: restoring rank 0's random stream on it would not continue it.
    rank1_stream = torch.load(saved / "ganpo_regularizer.rank1.local.pt", weights_only=True)["local"]["cpu_rng"]
    assert not torch.equal(
        rank1_stream, torch.load(saved / "ganpo_regularizer.pt", weights_only=True)["state"]["cpu_rng"]
    )
    for name, part in (("ganpo_regularizer.pt", "state"), ("ganpo_regularizer.rank1.local.pt", "local")):
        ends = [torch.load(run / "checkpoint-4" / name, weights_only=True)[part] for run in (whole, resumed)]
        assert_states_equal(ends[0], ends[1], f"{name} at step 4")
    assert torch.load(whole / "checkpoint-4" / "ganpo_regularizer.pt", weights_only=True)["state"]["disc_steps"] == 4
