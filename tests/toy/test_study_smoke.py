"""The regime study (examples/toy_alignment/study.py) runs end to end at its ``--tiny`` size, applies
each regime to the pairs it trains on, resumes from its per-run files, and reports differences that
match its run files.

Two invocations in subprocesses: the first runs only the ``clean`` regime; the second asks for the
whole tiny grid and must reuse the first one's run files untouched.
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
REGIMES = ("clean", "noisy20", "noisy40", "little", "length")
METHODS = ("dpo", "simpo")
WEIGHTS = (0.0, 1.0)
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, host_env: dict[str, str]) -> dict:
    tmp = tmp_path_factory.mktemp("study")
    out = tmp / "out"
    base = [sys.executable, "examples/toy_alignment/study.py", "--tiny", "--out", str(out), "--cache", str(tmp / "c")]

    def invoke(*extra: str) -> str:
        proc = subprocess.run([*base, *extra], cwd=REPO, env=host_env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    logs = [invoke("--regimes", "clean")]
    first = {p: p.stat().st_mtime_ns for p in (out / "runs" / "clean").glob("*.json")}
    logs.append(invoke())
    return {"out": out, "logs": logs, "first": first}


def run_file(out: Path, regime: str, method: str, weight: float, seed: int) -> dict:
    return json.loads((out / "runs" / regime / f"{method}-lam{weight:g}-seed{seed}.json").read_text())


def test_second_invocation_resumes_from_the_run_files(study: dict) -> None:
    n_clean = len(METHODS) * len(WEIGHTS) * len(SEEDS)
    assert len(study["first"]) == n_clean
    total = len(REGIMES) * n_clean
    assert f"{total} runs in the grid, {n_clean} already done, {total - n_clean} to go" in study["logs"][1]
    for path, mtime in study["first"].items():
        assert path.stat().st_mtime_ns == mtime, f"{path.name} was run again"


def test_every_run_measured_what_the_study_reports(study: dict) -> None:
    out = study["out"]
    for regime in REGIMES:
        for method in METHODS:
            for weight in WEIGHTS:
                for seed in SEEDS:
                    row = run_file(out, regime, method, weight, seed)
                    for t in (0.5, 1.0, 1.5):
                        assert 0.0 <= row[f"reward@{t}"] <= 1.0
                        assert row[f"length@{t}"] >= 0.0
                    for key in ("kl_ref", "drift_chosen", "drift_rejected"):
                        assert math.isfinite(row[key]), (regime, method, weight, key)
                    if weight == 0.0:
                        assert "d_pos_acc" not in row and not any(k.startswith("ganpo/") for k in row["train_log"])
                    else:
                        for side in ("pos", "neg"):
                            assert 0.0 <= row[f"d_{side}_acc"] <= 1.0
                            assert 0.0 <= row[f"d_{side}_saturated_share"] <= 1.0


def test_regimes_changed_the_labels_they_train_on(study: dict) -> None:
    """The oracle pairs differ by at least 0.1 in oracle reward, so the clean labels never go against
    the oracle and a flipped share is exactly the share going against it."""
    labels = {r: json.loads((study["out"] / f"{r}.json").read_text())["meta"]["regime"]["labels"] for r in REGIMES}
    n = labels["clean"]["pairs"]
    assert labels["clean"]["against_oracle"] == 0.0
    assert labels["noisy20"]["against_oracle"] == pytest.approx(round(0.2 * n) / n)
    assert labels["noisy40"]["against_oracle"] == pytest.approx(round(0.4 * n) / n)
    assert labels["little"]["pairs"] == 16 < n
    assert labels["length"]["chosen_shorter"] == 0.0 and labels["length"]["chosen_longer"] > 0.5
    little = run_file(study["out"], "little", "dpo", 0.0, 0)
    clean = run_file(study["out"], "clean", "dpo", 0.0, 0)
    assert little["steps"] != clean["steps"]  # 16 pairs × 10 epochs, not all pairs × 1


def test_reported_differences_are_the_run_files_paired_by_seed(study: dict) -> None:
    out = study["out"]
    cells = json.loads((out / "noisy40.json").read_text())["cells"]
    cell = next(c for c in cells if c["method"] == "simpo" and c["weight"] == 1.0)
    reward = {(w, s): run_file(out, "noisy40", "simpo", w, s)["reward@1.0"] for w in WEIGHTS for s in SEEDS}
    deltas = [reward[1.0, s] - reward[0.0, s] for s in SEEDS]
    # two seeds: mean ± t(0.975, 1) · |d0 − d1| / 2 (s = |d0 − d1| / √2, se = s / √2)
    half = 12.7062047 * abs(deltas[0] - deltas[1]) / 2
    got = cell["delta"]["reward@1.0"]
    assert (got["mean"], got["low"], got["high"]) == pytest.approx(
        (sum(deltas) / 2, sum(deltas) / 2 - half, sum(deltas) / 2 + half), abs=1e-6
    )
    for regime in REGIMES:
        assert f"| {regime} | DPO |" in (out / "summary.md").read_text()
        assert (out / f"{regime}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "| DPO | 1 | 2 |" in (out / f"{regime}.md").read_text()
