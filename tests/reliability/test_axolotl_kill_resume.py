"""An Axolotl run killed with SIGKILL right after checkpoint N and resumed from it ends exactly
where an uninterrupted run ends: discriminators, μ, discriminator optimiser state, the
regularizer's RNG, the per-step losses and the policy weights (deterministic on CPU)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from state_equality import assert_states_equal

pytest.importorskip("axolotl.cli", reason="needs Axolotl: tox -e axolotl-oldest")

import yaml

pytestmark = [pytest.mark.axolotl, pytest.mark.slow]

TESTS = Path(__file__).resolve().parents[1]

STEPS, KILL_AFTER = 4, 2
# The example as it is (2 pairs per micro-step, 2 micro-steps per optimiser step), shorter.
OVERRIDES = {
    "max_steps": STEPS,
    "save_steps": KILL_AFTER,
    "ganpo": {"discriminator": {"d_model": 32, "num_heads": 4, "ffn_size": 64}},
}


def _write_config(folder: Path, tiny: Path, example_config: Callable[..., dict[str, Any]], **extra: Any) -> Path:
    cfg = example_config("examples/axolotl/tiny_dpo_ganpo.yml", OVERRIDES, extra)
    cfg["base_model"] = str(tiny / "model")
    cfg["datasets"][0]["path"] = str(tiny / "prefs.jsonl")
    cfg["dataset_prepared_path"] = str(folder.parent / "prepared")
    cfg["output_dir"] = str(folder / "out")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.yml").write_text(yaml.safe_dump(cfg))
    return folder / "cfg.yml"


def _losses(checkpoint: Path) -> dict[int, float]:
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def test_sigkill_after_a_checkpoint_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path,
    tiny_assets: Path,
    example_config: Callable[..., dict[str, Any]],
    run_cli: Callable[..., Any],
    host_env: dict[str, str],
) -> None:
    train = ["-m", "axolotl.cli.train"]
    full_cfg = _write_config(tmp_path / "full", tiny_assets, example_config)
    full = run_cli([*train, str(full_cfg)], log=tmp_path / "full.log", cwd=tmp_path)
    assert full.returncode == 0, full.stdout[-4000:]
    full_out = tmp_path / "full" / "out"

    # The same run, killed with SIGKILL from inside as step KILL_AFTER + 1 begins (checkpoint
    # KILL_AFTER and every on_save callback done): a known point, not a race with a poll.
    killed_cfg = _write_config(tmp_path / "killed", tiny_assets, example_config)
    out = tmp_path / "killed" / "out"
    done = out / f"checkpoint-{KILL_AFTER}" / "trainer_state.json"  # HF writes it last
    kill_at = [sys.executable, str(TESTS / "kill_at.py"), f"trainer-step:{KILL_AFTER}"]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [*kill_at, *train, str(killed_cfg)], env=host_env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            proc.wait(timeout=600)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: whatever workers the run left
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-4000:]
    assert done.exists() and not (out / f"checkpoint-{STEPS}").exists()

    resume_cfg = _write_config(
        tmp_path / "killed", tiny_assets, example_config, resume_from_checkpoint=str(done.parent)
    )
    resumed = run_cli([*train, str(resume_cfg)], log=tmp_path / "resumed.log", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-4000:]

    last = f"checkpoint-{STEPS}"
    ours = torch.load(out / last / "ganpo_regularizer.pt", weights_only=True)["state"]
    theirs = torch.load(full_out / last / "ganpo_regularizer.pt", weights_only=True)["state"]
    assert ours["disc_steps"] == STEPS
    assert_states_equal(ours, theirs)  # discriminators, μ, optimisers, RNG stream, counters
    assert _losses(out / last) == _losses(full_out / last)
    from safetensors.torch import load_file

    assert_states_equal(load_file(out / "model.safetensors"), load_file(full_out / "model.safetensors"), "policy")
