"""Axolotl ``rl: grpo`` with the ``ganpo:`` block through the real CLI (``python -m axolotl.cli.train``):
Axolotl builds its GRPO trainer (a ``trl.GRPOTrainer`` subclass) with its own reward-function config,
the plugin attaches the regularizer (sides by advantage sign), and bad input stops the run before any
model loads. The reward and dataset transform are examples/axolotl/tiny_grpo_rewards.py, copied into
the run folder (the CLI's working directory, on its import path)."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("axolotl.cli", reason="needs Axolotl: tox -e axolotl-oldest / axolotl-newest")

pytestmark = [pytest.mark.axolotl, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = "examples/axolotl/tiny_grpo_ganpo.yml"
# One prompt's 4 completions per optimiser step (one process: Axolotl asks for at least num_generations).
SMALL = {"max_steps": 3, "save_steps": 3, "micro_batch_size": 4, "gradient_accumulation_steps": 1,
         "ganpo": {"discriminator": {"d_model": 32, "num_heads": 4, "ffn_size": 64}}}  # fmt: skip


@pytest.fixture(scope="module")
def grpo_cfg(
    tiny_assets: Path, axolotl_workdir: Path, example_config: Callable[..., dict[str, Any]]
) -> Callable[..., dict[str, Any]]:
    def build(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        cfg = example_config(EXAMPLE, SMALL, overrides or {})
        cfg["base_model"] = str(tiny_assets / "model")
        cfg["datasets"][0]["path"] = str(tiny_assets / "prefs.jsonl")
        cfg["dataset_prepared_path"] = str(axolotl_workdir / "prepared-grpo")
        cfg["output_dir"] = str(axolotl_workdir / name / "out")
        folder = axolotl_workdir / name
        folder.mkdir(exist_ok=True)
        shutil.copy(REPO / "examples/axolotl/tiny_grpo_rewards.py", folder)
        return cfg

    return build


@pytest.mark.newest
def test_grpo_trains_with_the_ganpo_block(grpo_cfg: Callable[..., Any], axolotl_train: Callable[..., Any]) -> None:
    run = axolotl_train("grpo", grpo_cfg("grpo"))
    run.assert_ok()
    assert "regularizer ON" in run.log and "GRPOTrainer" in run.log and "sides by advantage sign" in run.log
    history = run.history()
    assert len(history) == 3
    for entry in history:
        assert {"ganpo/completions_pos", "ganpo/completions_neg", "ganpo/term_skipped"} <= entry.keys(), sorted(entry)
        assert all(math.isfinite(v) for k, v in entry.items() if k.startswith("ganpo/"))
    state = run.regularizer_state(3)["state"]
    assert state["policy_steps"] == 3 and state["disc_steps"] >= 1
    assert (run.out / "ganpo_regularizer.pt").exists()  # post_train wrote it beside the final model


@pytest.mark.newest
def test_a_preference_loss_with_grpo_stops_the_run_before_any_model_loads(
    grpo_cfg: Callable[..., Any], axolotl_train: Callable[..., Any]
) -> None:
    run = axolotl_train("grpo-bad", grpo_cfg("grpo-bad", {"ganpo": {"preference_loss": "logistic"}}))
    assert run.returncode != 0
    assert "ganpo.preference_loss='logistic': GRPO/RLOO train on the trainer's own" in run.log
    assert "Loading weights" not in run.log and not run.out.exists()
