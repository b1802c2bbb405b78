"""A GANPO run of the real OpenRLHF DPO CLI, killed with SIGKILL after a checkpoint and resumed with
``--ckpt.load_enable``, ends exactly where an uninterrupted run ends: same discriminators, μ,
discriminator optimiser state, policy weights, and the same losses after the resume point
(deterministic on CPU)."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from state_equality import assert_states_equal

pytest.importorskip("openrlhf")
pytest.importorskip("tensorboard")

_spec = importlib.util.spec_from_file_location("orl_host", Path(__file__).parents[1] / "host_openrlhf" / "orl_host.py")
assert _spec is not None and _spec.loader is not None
orl_host = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(orl_host)

MODULE = "ganpo_openrlhf.train_dpo"
STEPS = 6  # 24 pairs, batch 4 of micro-batches of 2; a checkpoint every 2 steps


def _args(assets: Path, out: Path, *extra: str) -> list[str]:
    flags = ("--ds.zero_stage", "2", "--ckpt.save_steps", "2", "--ckpt.max_num", "5", *extra)
    return orl_host.dpo_args(assets, out, *orl_host.TINY_D, *flags, samples=4 * STEPS)


def _run_and_kill_after_first_checkpoint(args: list[str], out: Path, env: dict[str, str]) -> int:
    """Start the run, SIGKILL it (its whole process group) as soon as its first checkpoint is
    complete (DeepSpeed's ``latest`` pointer written); return its exit status."""
    latest = out / "ckpt" / "latest"
    with open(out / "killed.log", "w") as log:
        proc = subprocess.Popen(
            orl_host.command(MODULE, args), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 600
            while proc.poll() is None and time.monotonic() < deadline:
                if latest.exists() and latest.read_text().strip():
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.05)
            return proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_assets: Path, host_env, tmp_path: Path) -> None:
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    result = orl_host.run(MODULE, _args(tiny_assets, whole), whole / "log.txt", host_env)
    orl_host.check(result, whole / "log.txt")

    broken.mkdir()
    status = _run_and_kill_after_first_checkpoint(
        _args(tiny_assets, broken), broken, orl_host.subprocess_env(host_env, 1)
    )
    assert status == -signal.SIGKILL, f"the run was not killed mid-way (exit {status})"
    assert not (broken / "model" / "ganpo_regularizer.pt").exists()

    resumed_tb = broken / "tb_resumed"
    args = _args(tiny_assets, broken, "--ckpt.load_enable", "--logger.tensorboard_dir", str(resumed_tb))
    result = orl_host.run(MODULE, args, broken / "resumed.log", host_env)
    orl_host.check(result, broken / "resumed.log")
    restored = re.search(r"ganpo: restored the regularizer state from \S*global_step(\d+)", result.stdout)
    assert restored, "the resumed run did not restore the regularizer"
    resumed_from = int(restored.group(1))
    assert 2 <= resumed_from < STEPS

    expected = orl_host.regularizer_state(whole / "model" / "ganpo_regularizer.pt")["state"]
    actual = orl_host.regularizer_state(broken / "model" / "ganpo_regularizer.pt")["state"]
    assert actual["disc_steps"] == STEPS
    assert_states_equal(actual, expected)

    from safetensors.torch import load_file

    policy_whole = load_file(whole / "model" / "model.safetensors")
    policy_resumed = load_file(broken / "model" / "model.safetensors")
    for key, tensor in policy_whole.items():
        assert torch.equal(policy_resumed[key], tensor), key

    logged_whole, logged_resumed = orl_host.scalars(whole / "tb"), orl_host.scalars(resumed_tb)
    after = list(range(resumed_from + 1, STEPS + 1))
    for tag in ("train/loss_mean", "train/ganpo/adv_loss", "train/ganpo/d_pos/loss", "train/ganpo/d_neg/loss"):
        assert sorted(logged_resumed[tag]) == after, tag
        assert [logged_resumed[tag][s] for s in after] == [logged_whole[tag][s] for s in after], tag
