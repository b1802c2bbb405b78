"""Online toy study: online DPO vs online GANPO(DPO) on the sorting task, the oracle as the reward function.

    python examples/toy_alignment/online_run.py --out examples/toy_alignment/results    # full, ~10 min on 2 cores
    python examples/toy_alignment/online_run.py --tiny --out /tmp/toy-online             # smoke, < 1 min

The SFT model is the offline study's (``run.py``; cached under ``--cache``, trained on first use). Each arm ×
seed runs ``trl.experimental.online_dpo.OnlineDPOTrainer``: per step it samples two completions per prompt from
the current policy, scores them with the oracle, and takes a DPO step on the (better, worse) pair; the GANPO arm
adds the regularizer through ``ganpo_trl.attach_regularizer``. Evaluation is the offline study's: samples at
temperatures 0.5/1.0/1.5 scored by the oracle, and the Pearson r of D+ (and D−, the implicit reward, the
policy's confidence) with the oracle at 1.5. Writes ``online_results.json``, ``online_results.md`` and
``online_*.png`` into ``--out``. See README.md, section "Online".
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from pathlib import Path

import run  # the offline study's entry point: environment, SFT cache
import torch
import toy_pipeline as tp
import toy_report
from toy_task import make_prompt, oracle_reward

ARMS = ("base", "ganpo")


@dataclasses.dataclass(frozen=True)
class Online:
    """The online-training settings (the offline DPO arm's β, lr and schedule; see README.md)."""

    steps: int
    prompts_per_step: int
    temperature: float = 1.0  # sampling temperature of the training completions (the offline pairs' T)
    lr: float = 1e-3
    beta: float = tp.DPO_BETA


FULL = Online(steps=200, prompts_per_step=16)
TINY = Online(steps=4, prompts_per_step=4)


def oracle(prompts: list[str], completions: list[str], **kwargs: object) -> list[float]:
    """The reward function TRL calls: the oracle on the completion's text (the end token is not in it)."""
    return [oracle_reward(p, c) for p, c in zip(prompts, completions, strict=True)]


def train_online(ganpo: bool, sft_dir: Path, sizes: tp.Sizes, online: Online, seed: int, work: Path):
    """One arm with the real ``OnlineDPOTrainer``; returns ``(policy, trainer, attachment)``."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, PrinterCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    tokenizer = PreTrainedTokenizerFast.from_pretrained(sft_dir)
    policy = AutoModelForCausalLM.from_pretrained(sft_dir)
    rng = random.Random(40_000)  # the same training prompts for every run; the seed shuffles them
    prompts = Dataset.from_dict({"prompt": [make_prompt(rng) for _ in range(online.steps * online.prompts_per_step)]})
    args = OnlineDPOConfig(
        **tp.shared_trainer_args(work, seed),
        per_device_train_batch_size=online.prompts_per_step,
        max_steps=online.steps,
        learning_rate=online.lr,
        beta=online.beta,
        temperature=online.temperature,
        max_new_tokens=tp.MAX_NEW_TOKENS,
    )
    trainer = OnlineDPOTrainer(
        policy, reward_funcs=oracle, args=args, train_dataset=prompts, processing_class=tokenizer
    )
    trainer.remove_callback(PrinterCallback)
    attachment = None
    if ganpo:
        from ganpo_trl import attach_regularizer

        attachment = attach_regularizer(trainer, tp.ganpo_config(sizes, seed))
    trainer.train()
    policy.eval()
    return policy, trainer, attachment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=run.HERE / "results", help="where results and plots go")
    parser.add_argument("--cache", type=Path, default=run.REPO / "outputs" / "toy_alignment", help="SFT cache")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: the same pipeline in under a minute")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: 0 1 2; tiny: 0)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per run (default: 200)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--ganpo-weight", type=float, default=None, help="λ of the GANPO arm (default: 1.0)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)

    sizes = tp.TINY if args.tiny else dataclasses.replace(tp.FULL, seeds=(0, 1, 2))
    online = TINY if args.tiny else FULL
    if args.seeds:
        sizes = dataclasses.replace(sizes, seeds=tuple(args.seeds))
    if args.steps:
        online = dataclasses.replace(online, steps=args.steps)
    if args.ganpo_weight is not None:
        sizes = dataclasses.replace(sizes, ganpo_weight=args.ganpo_weight)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    log = run.clock_logger(start)
    run.quiet_libraries()
    import transformers
    import trl

    sft_dir, _ = run.sft_and_pairs(sizes, args.cache, log)
    tokenizer, sft_model, runs = run.sft_baseline(sft_dir, sizes, log)
    for seed in sizes.seeds:
        for arm in args.arms:
            t0 = time.time()
            work = args.cache / "trainer" / f"online_dpo-{arm}-{seed}"
            policy, trainer, attachment = train_online(arm == "ganpo", sft_dir, sizes, online, seed, work)
            train_s = time.time() - t0
            row = {"method": "online_dpo", "arm": arm, "seed": seed, "train_s": train_s}
            row["train_log"] = toy_report.summarize_log(trainer.state.log_history)
            row.update(tp.evaluate(policy, sft_model, tokenizer, sizes, seed, "dpo", attachment))
            runs.append(row)
            log(f"online_dpo {arm:5s} seed {seed}: train {train_s:.0f}s, " + toy_report.brief(row))
    wall = time.time() - start
    meta = {
        "sizes": dataclasses.asdict(sizes),
        "online": dataclasses.asdict(online),
        "pairs": online.steps * online.prompts_per_step,
        "ganpo": tp.ganpo_config(sizes, 0) | {"seed": "= run seed"},
        "temperatures": list(tp.TEMPERATURES),
        "threads": args.threads,
        "versions": {m.__name__: m.__version__ for m in (torch, transformers, trl)},
        "wall_s": wall,
        "command": "python examples/toy_alignment/online_run.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    toy_report.write(args.out, runs, meta, prefix="online_")
    log(f"wrote {args.out}/online_results.md, online_results.json and plots; total {wall:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
