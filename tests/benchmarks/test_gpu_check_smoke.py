"""Smoke test of ``benchmarks/gpu_check.py`` without a GPU: the tiny CPU version, through the real TRL 1.9
``DPOTrainer`` (``tox -e trl-oldest``).

The command runs as a subprocess with ``CUDA_VISIBLE_DEVICES=""``, so it takes the CPU path even on a
machine with a GPU. Checked: the "no GPU" notice, the three tables (every row, finite positive numbers,
plain DPO as the unit of the ratios), every numerics check passing, and the ``--out`` file holding the
same report. Nothing about speed: a tiny model's numbers on a shared CI machine mean nothing.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from printed_numbers import assert_printed_ratio

pytest.importorskip("trl.trainer", reason="needs TRL 1.9: tox -e trl-oldest")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NO_GPU = "NO GPU FOUND: this is the CPU smoke version"
TRL_COLUMNS = (
    "run",
    "s/step (median)",
    "per-round medians",
    "time ratio",
    "peak memory MiB",
    "memory ratio",
    "FLOP bound",
)
TRL_ROWS = ("plain DPO", "GANPO(DPO)")
STEP_COLUMNS = ("pattern", "s/step (median)", "speed-up")
STEP_ROWS = (
    "reference (6 separate forwards, full seq)",
    "batched forwards, full seq (mask none)",
    "batched + response positions (default)",
)
NUMERICS_COLUMNS = ("check", "value", "tolerance", "result")


def _tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in ``text``: its rows (header first, separator dropped) as lists of cells."""
    tables: list[list[list[str]]] = []
    previous_was_table = False
    for line in text.splitlines():
        is_table = line.startswith("| ")
        if is_table:
            if not previous_was_table:
                tables.append([])
            tables[-1].append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif line.startswith("|---"):
            is_table = True
        previous_was_table = is_table
    return tables


def _positive_finite(value: str) -> float:
    number = float(value)
    assert math.isfinite(number) and number > 0, value
    return number


def test_cpu_smoke_version_prints_every_table_with_finite_numbers(tmp_path: Path, host_env: dict[str, str]) -> None:
    out = tmp_path / "report" / "gpu_check.md"
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--out", str(out)],
        cwd=REPO,
        env={**host_env, "CUDA_VISIBLE_DEVICES": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert NO_GPU in result.stdout

    trl_table, step_table, numerics_table = _tables(result.stdout)
    assert tuple(trl_table[0]) == TRL_COLUMNS
    trl_rows = {row[0]: dict(zip(TRL_COLUMNS, row, strict=True)) for row in trl_table[1:]}
    assert tuple(trl_rows) == TRL_ROWS
    for row in trl_rows.values():
        for column in TRL_COLUMNS[1:]:
            for value in row[column].split(" / "):  # per-round medians: one per round
                _positive_finite(value)
    plain, ganpo = (trl_rows[name] for name in TRL_ROWS)
    for name, row in trl_rows.items():  # plain DPO is the unit of the ratios
        assert_printed_ratio(row["time ratio"], row["s/step (median)"], plain["s/step (median)"], f"{name} time")
        assert_printed_ratio(row["memory ratio"], row["peak memory MiB"], plain["peak memory MiB"], f"{name} memory")
    assert float(ganpo["FLOP bound"]) > 1.0  # GANPO adds work; on the tiny model it dominates
    assert len(plain["per-round medians"].split(" / ")) == 2  # two alternated rounds

    assert tuple(step_table[0]) == STEP_COLUMNS
    assert tuple(row[0] for row in step_table[1:]) == STEP_ROWS
    for row in step_table[1:]:
        for value in row[1:]:
            _positive_finite(value)
    reference = step_table[1][1]  # the release's pattern is the unit
    for row in step_table[1:]:
        assert_printed_ratio(row[2], reference, row[1], f"{row[0]} speed-up")

    assert tuple(numerics_table[0]) == NUMERICS_COLUMNS
    assert len(numerics_table) == 1 + 5  # finite losses + 4 cross-device quantities
    assert all(row[3] == "pass" for row in numerics_table[1:]), numerics_table

    report = out.read_text()
    assert NO_GPU in report
    assert _tables(report) == [trl_table, step_table, numerics_table]
