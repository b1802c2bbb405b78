"""Resume and interrupt faults through the real Axolotl CLI (docs/reliability.md): a resume whose
config changed the discriminator's shape stops before any step, naming the keys; a changed
optimiser setting is followed and said; a truncated state file stops the resume naming the file
and the way out; SIGINT's final save writes the regularizer state beside the model."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("axolotl.cli", reason="needs Axolotl: tox -e axolotl-oldest / axolotl-newest")

import torch
from reliability.test_axolotl_kill_resume import KILL_AFTER, OVERRIDES, _write_config

pytestmark = [pytest.mark.axolotl, pytest.mark.slow]

TRAIN = ["-m", "axolotl.cli.train"]


@pytest.fixture(scope="module")
def first_run(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_assets: Path,
    example_config: Callable[..., dict[str, Any]],
    run_cli: Callable[..., Any],
) -> Path:
    """A finished run; its ``checkpoint-KILL_AFTER`` is what the resumes below start from."""
    folder = tmp_path_factory.mktemp("axolotl_resume") / "first"
    cfg = _write_config(folder, tiny_assets, example_config)
    result = run_cli([*TRAIN, str(cfg)], log=folder / "log.txt", cwd=folder)
    assert result.returncode == 0, result.stdout[-4000:]
    return folder / "out" / f"checkpoint-{KILL_AFTER}"


def _resume(
    name: str,
    checkpoint: Path,
    tiny: Path,
    example_config: Callable[..., dict[str, Any]],
    run_cli: Callable[..., Any],
    ganpo: dict[str, Any],
) -> tuple[subprocess.CompletedProcess[str], Path]:
    folder = checkpoint.parents[2] / name
    start = shutil.copytree(checkpoint, folder / "out" / checkpoint.name)
    merged = {**OVERRIDES["ganpo"], **ganpo}
    cfg = _write_config(folder, tiny, example_config, resume_from_checkpoint=str(start), ganpo=merged)
    return run_cli([*TRAIN, str(cfg)], log=folder / "log.txt", cwd=folder), start


@pytest.mark.newest
def test_changed_discriminator_shape_stops_the_resume_naming_the_keys(
    first_run: Path, tiny_assets: Path, example_config: Callable[..., Any], run_cli: Callable[..., Any]
) -> None:
    disc = {**OVERRIDES["ganpo"]["discriminator"], "num_heads": 8}
    result, _ = _resume("heads", first_run, tiny_assets, example_config, run_cli, {"discriminator": disc})
    assert result.returncode != 0
    assert "was saved with a different regularizer architecture (discriminator.num_heads: 4 → 8)" in result.stdout
    assert "Resume with the old values, or start a new run" in result.stdout
    assert "'loss':" not in result.stdout  # not one training step ran


def test_changed_optimiser_settings_are_followed_and_said(
    first_run: Path, tiny_assets: Path, example_config: Callable[..., Any], run_cli: Callable[..., Any]
) -> None:
    result, _ = _resume("betas", first_run, tiny_assets, example_config, run_cli, {"optimizer": {"betas": [0.5, 0.9]}})
    assert result.returncode == 0, result.stdout[-4000:]
    assert "the resumed run follows the new config: optimizer.betas: [0.9, 0.999] → [0.5, 0.9]" in result.stdout


def test_truncated_state_file_stops_the_resume_naming_file_and_fix(
    first_run: Path, tiny_assets: Path, example_config: Callable[..., Any], run_cli: Callable[..., Any]
) -> None:
    folder = first_run.parents[2] / "truncated"
    start = shutil.copytree(first_run, folder / "out" / first_run.name)
    state = start / "ganpo_regularizer.pt"
    state.write_bytes(state.read_bytes()[:100])
    cfg = _write_config(folder, tiny_assets, example_config, resume_from_checkpoint=str(start))
    result = run_cli([*TRAIN, str(cfg)], log=folder / "log.txt", cwd=folder)
    assert result.returncode != 0
    assert f"{state} is truncated or corrupt" in result.stdout
    assert "delete it to start the regularizer fresh" in result.stdout
    assert "'loss':" not in result.stdout


@pytest.mark.newest
def test_sigint_final_save_writes_the_regularizer_state_beside_the_model(
    tmp_path: Path, tiny_assets: Path, example_config: Callable[..., Any], host_env: dict[str, str]
) -> None:
    cfg = _write_config(tmp_path / "sigint", tiny_assets, example_config, max_steps=200, save_steps=KILL_AFTER)
    out = tmp_path / "sigint" / "out"
    started = out / f"checkpoint-{KILL_AFTER}" / "trainer_state.json"
    with open(tmp_path / "sigint.log", "w") as log:
        proc = subprocess.Popen([sys.executable, *TRAIN, str(cfg)], env=host_env, cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 600
            while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGINT)  # as Ctrl-C would: Axolotl saves the model and exits
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    log_text = (tmp_path / "sigint.log").read_text()
    assert proc.returncode == 0, log_text[-4000:]
    assert not (out / "checkpoint-200").exists()  # interrupted, not finished
    assert (out / "model.safetensors").exists()
    saved = torch.load(out / "ganpo_regularizer.pt", weights_only=True)
    assert saved["state"]["disc_steps"] >= KILL_AFTER
