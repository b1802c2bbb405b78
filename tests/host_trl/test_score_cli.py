"""``python -m ganpo_plugins.score`` end to end on the tiny random Llama, offline, CPU.

The scores are checked against an independent path: the policy's ``hidden_states[-1]`` (the
final-norm output) at the response positions, through the saved discriminators.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="needs transformers: tox -e trl-oldest")

from transformers import AutoModelForCausalLM, AutoTokenizer

from ganpo_plugins import LatentBatch, RegularizerContext, RegularizerRunner, StepInfo
from ganpo_plugins.tools.score import load_discriminators, pearson, spearman

SMALL_D = {"discriminator": {"d_model": 32, "num_heads": 4, "ffn_size": 64}}
HIDDEN = 64  # examples/tiny/make_tiny_assets.py


@pytest.fixture(scope="module")
def scoring_inputs(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved GANPO state for the tiny model (a few discriminator steps on random latents) and
    16 (prompt, response) rows: each pair's chosen answer with oracle 1, rejected with oracle 0."""
    out = tmp_path_factory.mktemp("score")
    runner = RegularizerRunner(SMALL_D, RegularizerContext(hidden_size=HIDDEN, policy_lr=1e-3, total_steps=10))
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        h = [torch.randn(2, 6, HIDDEN, generator=g) for _ in range(4)]
        ones = torch.ones(2, 6, dtype=torch.bool)
        runner.regularizer.update(LatentBatch(*h, ones, ones, ones, ones), StepInfo())
    runner.save(out / "run")
    pairs = [json.loads(line) for line in (tiny_assets / "prefs.jsonl").read_text().splitlines()[:8]]
    with open(out / "rows.jsonl", "w") as f:
        for pair in pairs:
            for key, oracle in (("chosen", 1.0), ("rejected", 0.0)):
                f.write(json.dumps({"prompt": pair["prompt"], "response": pair[key], "oracle": oracle}) + "\n")
    return out


def _expected_d_pos(model_dir: Path, run_dir: Path, prompt: str, response: str) -> float:
    """D+ of one row through ``output_hidden_states`` (not the command's tap), response tokens + EOS."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1]
        saved = load_discriminators(run_dir, HIDDEN)
        return saved.discriminators["pos"](
            hidden[:, len(prompt_ids) :], torch.ones(1, len(ids) - len(prompt_ids), dtype=torch.bool)
        ).item()


def test_score_command_writes_scores_and_correlations(
    tiny_assets: Path, scoring_inputs: Path, run_cli: Callable[..., object]
) -> None:
    out = scoring_inputs / "scores.jsonl"
    args = [
        "--state",
        scoring_inputs / "run",
        "--model",
        tiny_assets / "model",
        "--data",
        scoring_inputs / "rows.jsonl",
    ]
    result = run_cli(
        [
            "-m",
            "ganpo_plugins.score",
            *map(str, args),
            "--out",
            str(out),
            "--reference-column",
            "oracle",
            "--batch-size",
            "3",
        ],
        log=scoring_inputs / "score.log",
        timeout=300,
    )
    assert result.returncode == 0, result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 16 and all(isinstance(r["d_pos"], float) and isinstance(r["d_neg"], float) for r in rows)
    assert rows[0]["oracle"] == 1.0 and rows[1]["oracle"] == 0.0  # input columns kept
    # batched with right padding = one row alone through hidden_states[-1]
    expected = _expected_d_pos(tiny_assets / "model", scoring_inputs / "run", rows[4]["prompt"], rows[4]["response"])
    assert rows[4]["d_pos"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    oracle = [r["oracle"] for r in rows]
    for column in ("d_pos", "d_neg"):
        scores = [r[column] for r in rows]
        line = re.search(rf"{column} vs oracle: pearson (\S+)  spearman (\S+)  \(n=16\)", result.stdout)
        assert line is not None, result.stdout
        assert float(line[1]) == pytest.approx(pearson(scores, oracle), abs=1e-4)
        assert float(line[2]) == pytest.approx(spearman(scores, oracle), abs=1e-4)


def test_score_command_writes_csv_and_refuses_a_missing_field(
    tiny_assets: Path, scoring_inputs: Path, run_cli: Callable[..., object]
) -> None:
    out = scoring_inputs / "scores.csv"
    base = ["-m", "ganpo_plugins.score", "--state", str(scoring_inputs / "run"), "--model", str(tiny_assets / "model")]
    data = ["--data", str(scoring_inputs / "rows.jsonl")]
    result = run_cli(
        [*base, *data, "--out", str(out), "--mask", "sequence"], log=scoring_inputs / "csv.log", timeout=300
    )
    assert result.returncode == 0, result.stdout
    with open(out) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 16 and list(table[0]) == ["prompt", "response", "oracle", "d_pos", "d_neg"]
    float(table[0]["d_pos"])
    refused = run_cli(
        [*base, *data, "--out", str(out), "--response-field", "answer"], log=scoring_inputs / "bad.log", timeout=300
    )
    assert refused.returncode == 2 and "field 'answer' must be a string" in refused.stdout
