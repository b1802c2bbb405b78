"""APO rounds on CPU in about a minute: a tiny random Llama policy, a tiny random
sequence-classification reward model, golden responses = the dataset's chosen answers.

    python examples/apo/tiny_round.py --out outputs/apo_tiny [--rounds 2] [--subprocess]

Each round prints and runs the commands of a real round (APO, arXiv 2311.08045):

1. ``ganpo-apo sample``  k responses per prompt from the current policy
2. ``ganpo-apo pairs``   APO pairs (golden vs each sample) mixed with the human pairs
3. ``python -m ganpo_trl.reward``  train the reward model with the APO loss (TRL RewardTrainer)
4. ``ganpo-apo score``   rewards of the samples under the new reward model
5. ``ganpo-apo select``  best non-empty sample per prompt -> SFT data
6. ``python -m trl.scripts.sft``  the host's own SFT (what ``trl sft`` launches) on that data

By default the steps run in this process (one start-up instead of six); ``--subprocess`` runs
each printed command as its own process instead. The models are random: the round exercises the
machinery, it does not teach the model anything.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CPU_TRAINING = ["--bf16", "false", "--gradient_checkpointing", "false", "--report_to", "none", "--save_strategy", "no"]


def make_tiny_reward_model(assets: Path, seed: int = 1) -> Path:
    """``assets/rm``: a random ``LlamaForSequenceClassification`` (one output) with the tiny
    policy's config and tokenizer, built like the policy in ``examples/tiny/make_tiny_assets.py``."""
    out = assets / "rm"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    config = AutoConfig.from_pretrained(assets / "model", num_labels=1)
    torch.manual_seed(seed)
    LlamaForSequenceClassification(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(assets / "model").save_pretrained(out)
    return out


def round_commands(
    assets: Path, prompts: Path, work: Path, policy: Path, reward_model: Path, k: int
) -> list[list[str]]:
    """The six commands of one round; ``work`` receives every file it writes."""
    apo = ["ganpo-apo"]
    return [
        [*apo, "sample", "--model", str(policy), "--prompts", str(prompts),
         "--out", str(work / "samples.jsonl"), "--k", str(k), "--max-new-tokens", "16", "--batch-size", "8"],
        [*apo, "pairs", "--samples", str(work / "samples.jsonl"),
         "--golden", str(assets / "prefs.jsonl"), "--golden-field", "chosen",
         "--human", str(assets / "prefs.jsonl"), "--out", str(work / "rm_data/train.jsonl")],
        ["python", "-m", "ganpo_trl.reward", "--model_name_or_path", str(reward_model),
         "--dataset_name", str(work / "rm_data"), "--output_dir", str(work / "rm"),
         "--apo_c_human", "1.0", "--apo_c_apo", "0.1", "--apo_samples_per_prompt", str(k),
         "--per_device_train_batch_size", "8", "--max_steps", "4", "--learning_rate", "1e-3", *CPU_TRAINING],
        [*apo, "score", "--reward-model", str(work / "rm"), "--samples", str(work / "samples.jsonl"),
         "--out", str(work / "scored.jsonl")],
        [*apo, "select", "--scored", str(work / "scored.jsonl"), "--out", str(work / "sft_data/train.jsonl"),
         "--format", "prompt-completion"],
        ["python", "-m", "trl.scripts.sft", "--model_name_or_path", str(policy),
         "--dataset_name", str(work / "sft_data"), "--output_dir", str(work / "policy"),
         "--per_device_train_batch_size", "4", "--max_steps", "4", "--learning_rate", "1e-3", *CPU_TRAINING],
    ]  # fmt: skip


def run_in_process(cmd: list[str]) -> None:
    """Run one printed command through the same entry point, without a new interpreter."""
    if cmd[0] == "ganpo-apo":
        from ganpo_plugins.apo.cli import main

        if main(cmd[1:]) != 0:
            raise SystemExit(f"failed: {shlex.join(cmd)}")
    elif cmd[:3] == ["python", "-m", "ganpo_trl.reward"]:
        from ganpo_trl.reward import main

        main(cmd[3:])
    elif cmd[:3] == ["python", "-m", "trl.scripts.sft"]:
        from trl.scripts.sft import main, make_parser

        main(*make_parser().parse_args_and_config(cmd[3:]))
    else:
        raise ValueError(f"no in-process entry point for {cmd[0]}")


def run_subprocess(cmd: list[str]) -> None:
    if cmd[0] == "ganpo-apo":
        cmd = [sys.executable, "-m", "ganpo_plugins.apo", *cmd[1:]]
    elif cmd[0] == "python":
        cmd = [sys.executable, *cmd[1:]]
    subprocess.run(cmd, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/apo_tiny"))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=16, help="prompts sampled per round")
    parser.add_argument("--k", type=int, default=2, help="samples per prompt (the paper uses 4)")
    parser.add_argument("--subprocess", action="store_true", help="run each command as its own process")
    args = parser.parse_args()

    spec = importlib.util.spec_from_file_location("make_tiny_assets", REPO / "examples/tiny/make_tiny_assets.py")
    assert spec is not None and spec.loader is not None
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    assets = tiny.make_assets(args.out / "assets")
    reward_model = make_tiny_reward_model(assets)

    # prompts: the first distinct prompts of the preference data (golden = their chosen answers)
    from ganpo_plugins.apo.data import read_jsonl, unique_prompt_rows, write_jsonl

    rows = unique_prompt_rows(read_jsonl(assets / "prefs.jsonl"), "prefs.jsonl", dedupe=True)
    prompts = args.out / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": r["prompt"]} for r in rows[: args.prompts]])

    run = run_subprocess if args.subprocess else run_in_process
    policy = assets / "model"
    for r in range(1, args.rounds + 1):
        work = args.out / f"round{r}"
        for cmd in round_commands(assets, prompts, work, policy, reward_model, args.k):
            print(f"\n[round {r}] $ {shlex.join(cmd)}", flush=True)
            run(cmd)
        policy, reward_model = work / "policy", work / "rm"  # the next round starts from both
    print(f"\nfine-tuned policy: {policy}\nreward model: {reward_model}")


if __name__ == "__main__":
    main()
