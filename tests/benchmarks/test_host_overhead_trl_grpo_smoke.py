"""Smoke test of ``benchmarks/host_overhead.py --tiny --hosts trl-grpo``: plain GRPO and GRPO + GANPO
through TRL's own ``GRPOTrainer`` in subprocesses (``benchmarks/ganpo_bench_trl_grpo.py``). Checks the
table it prints: both rows, plain GRPO the unit, finite positive ratios, the GANPO run's FLOP bound
above 4/3 (the adapter's own reference forward at β = 0 alone adds a third of a forward + backward),
and the regularizer state written by the GANPO run only. Nothing about speed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl.trainer", reason="needs TRL: tox -e trl-newest")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ROWS = ("plain GRPO", "GRPO + GANPO (mask response)")
NUMERIC = ("s/step (median)", "time ratio", "CPU ratio", "FLOP bound", "train peak RSS MiB", "peak ratio")


def test_tiny_grpo_benchmark_prints_both_rows(tmp_path: Path, host_env: dict[str, str]) -> None:
    cmd = [sys.executable, "benchmarks/host_overhead.py", "--tiny", "--hosts", "trl-grpo", "--threads", "1"]
    result = subprocess.run(
        [*cmd, "--trl-python", sys.executable, "--workdir", str(tmp_path)],
        cwd=REPO, env=host_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {cells[0]: dict(zip(header, cells, strict=True))
            for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])}  # fmt: skip
    assert tuple(rows) == ROWS, list(rows)
    for name, row in rows.items():
        for column in NUMERIC:
            assert math.isfinite(float(row[column])) and float(row[column]) > 0, (name, column)
    assert float(rows["plain GRPO"]["time ratio"]) == 1.0 and float(rows["plain GRPO"]["FLOP bound"]) == 1.0
    assert float(rows[ROWS[1]]["FLOP bound"]) > 4 / 3
    (grpo,) = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [run["regularizer_state"] for run in grpo["runs"]] == [False, True]
