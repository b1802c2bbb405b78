"""The round driver on tiny random models (CPU): resumable sampling, scoring at the last response
token, and one complete round ending in TRL's own SFT."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("trl.trainer", reason="needs TRL: tox -e trl-oldest / axolotl-oldest")

import torch
from safetensors.torch import load_file

from ganpo_plugins.apo.cli import main as apo_cli
from ganpo_plugins.apo.data import prompt_key, read_jsonl, unique_prompt_rows, write_jsonl

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples/apo" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prompts(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = unique_prompt_rows(read_jsonl(tiny_assets / "prefs.jsonl"), "prefs", dedupe=True)[:12]
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    write_jsonl(path, [{"prompt": r["prompt"], "golden": r["chosen"]} for r in rows])
    return path


def sample_args(model: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    return ["sample", "--model", str(model), "--prompts", str(prompts), "--out", str(out),
            "--k", "2", "--max-new-tokens", "8", "--batch-size", "2", *extra]  # fmt: skip


def test_sample_resumes_like_an_uninterrupted_run(tiny_assets: Path, prompts: Path, tmp_path: Path) -> None:
    model = tiny_assets / "model"
    fresh, resumed = tmp_path / "fresh.jsonl", tmp_path / "resumed.jsonl"
    assert apo_cli(sample_args(model, prompts, fresh)) == 0
    assert apo_cli(sample_args(model, prompts, resumed, "--stop-after", "4")) == 0
    first_part = resumed.read_text()
    assert len(first_part.splitlines()) == 4
    with open(resumed, "a") as f:  # what a kill in the middle of a write leaves behind
        f.write('{"prompt": [{"role": "user", "content": "Repeat: re')
    assert apo_cli(sample_args(model, prompts, resumed)) == 0
    text = resumed.read_text()
    assert text.startswith(first_part)  # nothing written before was touched
    assert text == fresh.read_text()  # same rows, same order, same samples; the torn line is gone
    rows = read_jsonl(resumed)
    assert [prompt_key(r["prompt"]) for r in rows] == [prompt_key(r["prompt"]) for r in read_jsonl(prompts)]
    assert all(len(r["samples"]) == 2 and r["golden"] for r in rows)  # other fields carried along
    assert apo_cli(sample_args(model, prompts, resumed)) == 0  # a finished run stays as it is
    assert resumed.read_text() == text


@pytest.mark.slow  # a second interpreter start (~20-40 s on 2 shared cores); the torn-line test above is in-process
def test_sample_killed_mid_run_continues_without_loss_or_duplicates(
    tiny_assets: Path, prompts: Path, tmp_path: Path, host_env: dict[str, str]
) -> None:
    out = tmp_path / "samples.jsonl"
    args = sample_args(tiny_assets / "model", prompts, out)
    args[args.index("--batch-size") + 1] = "1"
    # killed from inside once 2 batches (one prompt each) are written and synced, in the third's work
    kill_at = [sys.executable, str(TESTS / "kill_at.py"), "apo-batch:2", "-m", "ganpo_plugins.apo"]
    proc = subprocess.run([*kill_at, *args], env=host_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    data = out.read_bytes()
    before = data[: data.rfind(b"\n") + 1]  # the complete rows the killed run left
    assert before == data and before.count(b"\n") == 2  # exactly the two synced rows
    assert apo_cli(args) == 0
    after = out.read_bytes()
    assert after.startswith(before)
    rows = read_jsonl(out)
    assert [prompt_key(r["prompt"]) for r in rows] == [prompt_key(r["prompt"]) for r in read_jsonl(prompts)]


def test_score_reads_the_reward_at_the_last_response_token(
    tiny_assets: Path, prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Batched, length-sorted, right-padded scores equal one unpadded forward per response, read at
    its last token; a causal-LM checkpoint (random score head) is refused."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm_dir = load_example("tiny_round").make_tiny_reward_model(tiny_assets)
    samples = tmp_path / "samples.jsonl"
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}], "samples": [r["golden"], r["golden"][:5], ""]}
            for r in read_jsonl(prompts)[:4]]  # fmt: skip
    write_jsonl(samples, rows)
    scored = tmp_path / "scored.jsonl"
    args = ["score", "--reward-model", str(rm_dir), "--samples", str(samples), "--out", str(scored)]
    assert apo_cli([*args, "--batch-size", "3"]) == 0

    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    for row in read_jsonl(scored):
        for response, reward in zip(row["samples"], row["rewards"], strict=True):
            messages = [*row["prompt"], {"role": "assistant", "content": response}]
            ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
            with torch.no_grad():
                hidden = model.model(input_ids=ids["input_ids"]).last_hidden_state
                expected = model.score(hidden[0, -1]).item()
            assert reward == pytest.approx(expected, abs=1e-5)

    capsys.readouterr()
    assert apo_cli(["score", "--reward-model", str(tiny_assets / "model"), "--samples", str(samples),
                    "--out", str(tmp_path / "bad.jsonl")]) == 2  # fmt: skip
    assert "has no reward head (score.weight would be random)" in capsys.readouterr().err


def test_one_complete_round_fine_tunes_the_policy(
    tmp_path: Path, run_cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """examples/apo/tiny_round.py: sample -> pairs -> APO reward model (TRL) -> score -> select ->
    TRL's own SFT script."""
    out = tmp_path / "round"
    result = run_cli(["examples/apo/tiny_round.py", "--out", str(out), "--prompts", "12"], log=tmp_path / "log.txt",
                     cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    work = out / "round1"

    def weights(path: Path) -> dict[str, torch.Tensor]:
        return load_file(path / "model.safetensors")

    start, tuned = weights(out / "assets/model"), weights(work / "policy")
    assert start.keys() == tuned.keys()
    assert max((start[k] - tuned[k]).abs().max().item() for k in start) > 1e-4
    rm_start, rm_tuned = weights(out / "assets/rm"), weights(work / "rm")
    assert max((rm_start[k] - rm_tuned[k]).abs().max().item() for k in rm_start) > 1e-4

    pairs = read_jsonl(work / "rm_data/train.jsonl")
    assert sum(p["is_apo"] for p in pairs) == 12 * 2 and sum(not p["is_apo"] for p in pairs) == 64
    scored = {prompt_key(r["prompt"]): r for r in read_jsonl(work / "scored.jsonl")}
    sft = read_jsonl(work / "sft_data/train.jsonl")
    assert 0 < len(sft) <= 12
    for row in sft:  # each SFT target is the best-rewarded non-empty sample of its prompt
        s = scored[prompt_key(row["prompt"])]
        best = max((r, x) for r, x in zip(s["rewards"], s["samples"], strict=True) if x.strip())
        assert row["completion"] == [{"role": "assistant", "content": best[1]}]
