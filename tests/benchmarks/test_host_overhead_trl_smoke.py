"""Smoke test of ``benchmarks/host_overhead.py --tiny --hosts trl`` through TRL's own ``DPOTrainer``
(``tox -e trl-oldest`` / ``trl-newest``).

Runs the whole benchmark at a tiny size (four real ``trl.DPOTrainer`` runs in subprocesses, through
``benchmarks/ganpo_bench_trl.py``: plain DPO, GANPO with mask response, GANPO with mask none, GANPO
with ``preference_loss: savage``) and checks the table it prints: every row is there, plain DPO is
the unit, each ratio and bound is a finite positive number, and the savage run's base loss was
computed by ganpo_plugins. Nothing about speed: a tiny model's numbers on a shared CI machine mean
nothing.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from printed_numbers import assert_printed_ratio

pytest.importorskip("trl.trainer", reason="needs TRL: tox -e trl-oldest")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SAVAGE = "GANPO + savage (GPO kind computed by ganpo_plugins)"
ROWS = ("plain DPO", "GANPO (mask response)", "GANPO (mask none)", SAVAGE)
NUMERIC = ("s/step (median)", "time ratio", "CPU ratio", "FLOP bound", "train peak RSS MiB", "peak ratio")


def _table(output: str) -> dict[str, dict[str, str]]:
    lines = [line for line in output.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def test_tiny_trl_benchmark_prints_every_row_with_finite_positive_ratios(
    tmp_path: Path, host_env: dict[str, str]
) -> None:
    cmd = [sys.executable, "benchmarks/host_overhead.py", "--tiny", "--hosts", "trl", "--threads", "1"]
    result = subprocess.run(
        [*cmd, "--trl-python", sys.executable, "--workdir", str(tmp_path)],
        cwd=REPO,
        env=host_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "## TRL " in result.stdout, result.stdout[-4000:]
    rows = _table(result.stdout)
    assert tuple(rows) == ROWS, list(rows)
    for name, row in rows.items():
        for column in NUMERIC:
            value = float(row[column])
            assert math.isfinite(value) and value > 0, (name, column, row[column])
    plain = rows["plain DPO"]  # the unit of every ratio
    for name, row in rows.items():
        for value, ratio in (("s/step (median)", "time ratio"), ("CPU s/step", "CPU ratio")):
            assert_printed_ratio(row[ratio], row[value], plain[value], f"{name} {ratio}")
    assert float(rows["GANPO (mask response)"]["FLOP bound"]) < float(rows[SAVAGE]["FLOP bound"])

    saved = json.loads((tmp_path / "results.json").read_text())
    (trl,) = saved["results"]
    for run in trl["runs"]:
        assert run["returncode"] == 0
        assert len(run["probe"]["steps"]) == saved["options"]["steps"]
        assert run["regularizer_state"] == (run["name"] != "plain DPO")
    savage_log = (tmp_path / "trl" / "r1-savage" / "log.txt").read_text()
    assert "base loss: savage (computed by ganpo_plugins" in savage_log
