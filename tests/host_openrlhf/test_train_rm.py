"""``python -m ganpo_openrlhf.train_rm``: the real ``openrlhf.cli.train_rm`` code path with the APO
reward-model loss, on a tiny random Llama reward model, on CPU."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("openrlhf")
pytest.importorskip("tensorboard")

from orl_host import TEMPLATE, check, run, scalars, subprocess_env, write_jsonl

MODULE = "ganpo_openrlhf.train_rm"
OPENRLHF_REWARDS = Path(__file__).resolve().parent / "openrlhf_rewards.py"
PAIRS = 8


@pytest.fixture(scope="module")
def apo_data(tiny_assets: Path, tmp_path_factory) -> Path:
    """Human pairs and APO pairs (golden = the chosen answer, sample = a shuffled, shortened copy)
    alternating."""
    rows = [json.loads(line) for line in (tiny_assets / "prefs.jsonl").read_text().splitlines()[:PAIRS]]
    rng = random.Random(0)
    mixed = []
    for i, row in enumerate(rows):
        if i % 2 == 0:
            mixed.append({**row, "is_apo": False})
        else:
            words = row["chosen"].split()
            rng.shuffle(words)
            sample = " ".join(words[: max(1, len(words) - 1)])
            mixed.append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": sample, "is_apo": True})
    return write_jsonl(tmp_path_factory.mktemp("apo") / "pairs.jsonl", mixed)


def _args(assets: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model.model_name_or_path", str(assets / "model"),
        "--data.dataset", str(data),
        "--eval.dataset", str(data),  # OpenRLHF's default eval split (1% of train) is empty here
        "--eval.split", "train",
        "--data.prompt_key", "prompt",
        "--data.input_template", TEMPLATE,
        "--data.max_len", "128",
        "--train.micro_batch_size", "1",
        "--train.batch_size", "1",
        "--ds.attn_implementation", "eager",
        "--adam.lr", "1e-3",
        "--model.compute_fp32_loss_enable",  # bf16 rewards, fp32 loss: the logged rewards give the loss
        "--ckpt.output_dir", str(out / "model"),
        "--ckpt.path", str(out / "ckpt"),
        "--logger.tensorboard_dir", str(out / "tb"),
        "--logger.wandb.run_name", "run",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def apo_runs(tiny_assets: Path, apo_data: Path, host_env, tmp_path_factory) -> dict[float, Path]:
    runs = {}
    for c_apo in (0.1, 0.0):
        out = tmp_path_factory.mktemp(f"rm_c_apo_{c_apo}")
        extra = () if c_apo == 0.1 else ("--apo.c_apo", str(c_apo))  # 0.1 is the default
        check(run(MODULE, _args(tiny_assets, apo_data, out, *extra), out / "log.txt", host_env), out / "log.txt")
        runs[c_apo] = out
    return runs


@pytest.mark.newest
def test_loss_is_apo_weighted_bradley_terry(apo_runs: dict[float, Path]) -> None:
    logged = scalars(apo_runs[0.1] / "tb")
    assert sorted(logged["train/loss"]) == list(range(1, PAIRS + 1))
    kinds = set()
    for step, loss in logged["train/loss"].items():
        # One pair per step: L = c · (−log σ(r(chosen) − r(rejected))), c = c_human = 1 for a human
        # pair and c_apo / k = 0.1 / 4 for an APO pair.
        is_apo = logged["train/apo/apo_share"][step]
        assert is_apo in (0.0, 1.0)
        kinds.add(is_apo)
        margin = logged["train/chosen_reward"][step] - logged["train/reject_reward"][step]
        weight = 0.1 / 4 if is_apo else 1.0
        assert loss == pytest.approx(weight * math.log1p(math.exp(-margin)), rel=1e-5, abs=1e-6), step
    assert kinds == {0.0, 1.0}
    assert "train/apo/human_loss" in logged and "train/apo/apo_loss" in logged


def test_apo_term_changes_the_reward_model(apo_runs: dict[float, Path]) -> None:
    from safetensors.torch import load_file

    with_apo = load_file(apo_runs[0.1] / "model" / "model.safetensors")
    without = load_file(apo_runs[0.0] / "model" / "model.safetensors")
    assert set(with_apo) == set(without)
    assert any(not torch.equal(with_apo[k], without[k]) for k in with_apo)
    logged = scalars(apo_runs[0.0] / "tb")
    for step, loss in logged["train/loss"].items():  # c_apo = 0: APO pairs contribute nothing
        if logged["train/apo/apo_share"][step] == 1.0:
            assert loss == 0.0, step


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--apo.c_apo", "-1"], ["--apo.c_apo", "0.1"]),
        (["--apo.k", "4"], ["--apo.k", "samples_per_prompt"]),
        (["--model.margin_loss_enable"], ["--model.margin_loss_enable"]),
    ],
)
def test_bad_apo_flags_stop_before_any_model_loads(
    flags: list[str], expected: list[str], tiny_assets: Path, apo_data: Path, host_env, tmp_path: Path
) -> None:
    result = run(MODULE, _args(tiny_assets, apo_data, tmp_path, *flags), tmp_path / "log.txt", host_env)
    assert result.returncode == 2, result.stdout[-3000:]
    assert "ganpo_openrlhf.train_rm: error:" in result.stdout
    for text in expected:
        assert text in result.stdout, result.stdout[-3000:]
    assert "Loading weights" not in result.stdout and not (tmp_path / "model").exists()


@pytest.mark.parametrize("chat", [False, True], ids=["text", "chat"])
def test_apo_score_reads_an_openrlhf_rm_where_openrlhf_does(
    chat: bool, apo_runs: dict[float, Path], tiny_assets: Path, host_env, tmp_path: Path
) -> None:
    """`ganpo-apo score --trained-by openrlhf` builds the token ids of OpenRLHF's own RewardDataset and
    reads the rewards of OpenRLHF's own RewardModel; the default (TRL's tokens) reads other tokens."""
    from transformers import AutoTokenizer

    from ganpo_plugins.apo.hf import openrlhf_reward_input_ids

    rm = apo_runs[0.1] / "model"
    pairs = [json.loads(line) for line in (tiny_assets / "prefs.jsonl").read_text().splitlines()[:3]]
    samples = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}] if chat else r["prompt"],
            "samples": [r["chosen"], r["rejected"] + "\n"],  # OpenRLHF strips trailing newlines
        }
        for r in pairs
    ]
    write_jsonl(tmp_path / "samples.jsonl", samples)
    template = None if chat else TEMPLATE
    scored = {}
    for trained_by in ("openrlhf", "trl"):
        out = tmp_path / f"scored_{trained_by}.jsonl"
        args = ["score", "--reward-model", str(rm), "--samples", str(tmp_path / "samples.jsonl"), "--out", str(out)]
        args += ["--trained-by", trained_by, "--device", "cpu", "--dtype", "float32"]
        if trained_by == "openrlhf" and template:
            args += ["--input-template", template]
        log = tmp_path / f"score_{trained_by}.log"
        check(run("ganpo_plugins.apo", args, log, host_env), log)
        scored[trained_by] = [x for line in out.read_text().splitlines() for x in json.loads(line)["rewards"]]

    items = [{"prompt": s["prompt"], "response": r} for s in samples for r in s["samples"]]
    write_jsonl(tmp_path / "items.jsonl", items)
    theirs_path = tmp_path / "openrlhf.json"
    command = [sys.executable, str(OPENRLHF_REWARDS), str(rm), str(tmp_path / "items.jsonl"), str(theirs_path)]
    result = subprocess.run(
        command + (["--input-template", template] if template else []),
        env=subprocess_env(host_env, 1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:]
    theirs = json.loads(theirs_path.read_text())

    tokenizer = AutoTokenizer.from_pretrained(rm)
    ours = [openrlhf_reward_input_ids(tokenizer, i["prompt"], i["response"], template) for i in items]
    assert ours == theirs["input_ids"]
    assert all(ids[-1] == tokenizer.eos_token_id for ids in ours)
    assert scored["openrlhf"] == pytest.approx(theirs["rewards"], abs=1e-5)
    assert max(abs(a - b) for a, b in zip(scored["trl"], theirs["rewards"], strict=True)) > 1e-3
