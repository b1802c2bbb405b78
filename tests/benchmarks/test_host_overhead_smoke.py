"""Smoke test of ``benchmarks/host_overhead.py --tiny`` through the real Axolotl CLI (``tox -e axolotl-oldest``).

Runs the whole benchmark at a tiny size (four real ``python -m axolotl.cli.train`` runs: plain
DPO, GANPO with mask response, GANPO with mask none, GANPO with ``preference_loss: savage``)
and checks the table it prints: every row is there, plain DPO is the unit, and each ratio and
bound is a finite positive number. It says
nothing about speed: the numbers of a tiny model on a shared CI machine mean nothing.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from printed_numbers import assert_printed_ratio

pytest.importorskip("axolotl.cli", reason="needs Axolotl: tox -e axolotl-oldest")

pytestmark = [pytest.mark.axolotl, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ROWS = (
    "plain DPO",
    "GANPO (mask response)",
    "GANPO (mask none)",
    "GANPO + savage (GPO kind computed by ganpo_plugins)",
)
COLUMNS = (
    "run",
    "s/step (median)",
    "per-round medians",
    "time ratio",
    "per-round ratios",
    "CPU s/step",
    "CPU ratio",
    "FLOP bound",
    "train peak RSS MiB",
    "peak ratio",
    "process peak RSS MiB",
)


def _table(output: str) -> dict[str, dict[str, str]]:
    lines = [line for line in output.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert tuple(header) == COLUMNS, header
    rows = {}
    for line in lines[1:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def test_tiny_benchmark_prints_every_row_with_finite_positive_ratios(tmp_path: Path, host_env: dict[str, str]) -> None:
    cmd = [sys.executable, "benchmarks/host_overhead.py", "--tiny", "--hosts", "axolotl", "--threads", "1"]
    result = subprocess.run(
        [*cmd, "--workdir", str(tmp_path)],
        cwd=REPO,
        env=host_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    rows = _table(result.stdout)
    assert tuple(rows) == ROWS, list(rows)
    for name, row in rows.items():
        for column in ("s/step (median)", "time ratio", "CPU ratio", "FLOP bound", "train peak RSS MiB", "peak ratio"):
            value = float(row[column])
            assert math.isfinite(value) and value > 0, (name, column, row[column])
    # Plain DPO is the unit of every ratio; GANPO does strictly more work, so its FLOP bound is above 1.
    plain = rows["plain DPO"]
    for name, row in rows.items():
        for value, ratio in (("s/step (median)", "time ratio"), ("CPU s/step", "CPU ratio")):
            assert_printed_ratio(row[ratio], row[value], plain[value], f"{name} {ratio}")
    response, none, savage = (float(rows[name]["FLOP bound"]) for name in ROWS[1:])
    assert min(response, none, savage) > 1.0
    # Masking to the response positions can only shrink the discriminators' work; savage adds
    # the package's own log-probabilities to the mask-response run.
    assert response < none
    assert response < savage

    # The raw data behind the table: every run finished all its steps, only GANPO runs saved regularizer state,
    # and the savage run's base loss was computed by ganpo_plugins.
    saved = json.loads((tmp_path / "results.json").read_text())
    (axolotl,) = saved["results"]
    assert {r["name"] for r in axolotl["runs"]} == set(ROWS)
    for run in axolotl["runs"]:
        assert run["returncode"] == 0
        assert len(run["probe"]["steps"]) == saved["options"]["steps"]
        assert run["regularizer_state"] == (run["name"] != "plain DPO")
    savage_log = (tmp_path / "axolotl" / "r1-savage" / "log.txt").read_text()
    assert "base loss: savage (computed by ganpo_plugins" in savage_log
