"""The toy reproduction runs end to end (at its ``--tiny`` size) and writes sane results.

Runs ``python examples/toy_alignment/run.py --tiny`` in a subprocess: SFT, pair labelling, DPO and SimPO
through the real TRL trainers, GANPO through ``ganpo_trl.attach_regularizer``, evaluation, table and
plots. It checks the outputs are well formed, not that GANPO wins.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("matplotlib")

REPO = Path(__file__).resolve().parents[2]
ROWS = ["SFT (start point)", "DPO", "GANPO (DPO)", "SimPO", "GANPO (SimPO)"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, host_env: dict[str, str]) -> Path:
    tmp = tmp_path_factory.mktemp("toy")
    out = tmp / "results"
    cmd = [sys.executable, "examples/toy_alignment/run.py", "--tiny", "--out", str(out), "--cache", str(tmp / "cache")]
    proc = subprocess.run(cmd, cwd=REPO, env=host_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_writes_table_plots_and_raw_numbers(results: Path) -> None:
    for name in ("results.md", "results.json", "reward_vs_temperature.png", "score_vs_oracle.png"):
        assert (results / name).stat().st_size > 0, name
    for png in results.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_has_one_row_per_method(results: Path) -> None:
    table = (results / "results.md").read_text()
    reward_section = table.split("### Oracle reward")[1].split("###")[0]
    labels = [line.split("|")[1].strip() for line in reward_section.splitlines() if line.startswith("| ")][1:]
    assert labels == ROWS


def test_rewards_and_correlations_are_in_range(results: Path) -> None:
    data = json.loads((results / "results.json").read_text())
    runs = data["runs"]
    assert sorted((r["method"], r["arm"]) for r in runs) == sorted(
        [("sft", "sft"), ("dpo", "base"), ("dpo", "ganpo"), ("simpo", "base"), ("simpo", "ganpo")]
    )
    for run in runs:
        for t in data["meta"]["temperatures"]:
            for key in (f"reward@{t}", f"perfect@{t}", f"ended@{t}"):
                assert math.isfinite(run[key]) and 0.0 <= run[key] <= 1.0, (run["method"], run["arm"], key)
        keys = {"sft": ["r_confidence"], "base": ["r_confidence", "r_implicit"]}.get(
            run["arm"], ["r_confidence", "r_implicit", "r_d_pos", "r_d_neg"]
        )
        for key in keys:
            assert math.isfinite(run[key]) and -1.0 <= run[key] <= 1.0, (run["method"], run["arm"], key)
        assert all(0.0 <= r <= 1.0 for r in run["scatter"]["oracle"])
        assert len(run["scatter"]["oracle"]) == len(run["scatter"]["confidence"]) > 0


def test_ganpo_arms_trained_discriminators(results: Path) -> None:
    """The GANPO arms went through the adapter: its metrics reached the trainer's log."""
    runs = json.loads((results / "results.json").read_text())["runs"]
    for run in runs:
        logged = run.get("train_log", {})
        if run["arm"] == "ganpo":
            assert math.isfinite(logged["ganpo/adv_loss"]) and logged["ganpo/adv_loss"] > 0
            assert 0.0 <= logged["ganpo/d_pos/accuracy"] <= 1.0
        else:
            assert not any(k.startswith("ganpo/") for k in logged)
