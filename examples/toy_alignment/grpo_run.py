"""GRPO toy study: GRPO with and without GANPO on the sorting task, the oracle as the verifiable reward.

    nice -n 10 python examples/toy_alignment/grpo_run.py --out examples/toy_alignment/results   # full, resumable
    python examples/toy_alignment/grpo_run.py --tiny --out /tmp/toy-grpo                         # smoke, ~1 min

Four arms — GRPO at β = 0 and β = 0.04, each plain and + GANPO (λ = 1, the offline study's
discriminator) — × 5 seeds, each a real ``trl.GRPOTrainer`` run from the offline study's SFT model
(``run.py``'s cache, trained on first use). Per step it samples ``generations`` completions for each of
``prompts_per_step`` prompts at T = 1, scores them with the oracle and takes one GRPO step; the GANPO
arms add the regularizer with ``ganpo_plugins.attach`` (sides by advantage sign; docs/methods.md).
Evaluation is the offline study's (oracle reward of samples at T ∈ {0.5, 1.0, 1.5}; Pearson r of D+/D−
with the oracle at 1.5) plus the KL to the SFT reference, a Monte-Carlo estimate from samples at T = 1.
Each finished run is cached (``--cache``/grpo_runs), so an interrupted study resumes where it stopped;
``--report-only`` writes the report from the runs finished so far.
Writes ``grpo_results.json``, ``grpo_results.md`` and ``grpo_*.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path

import run  # the offline study's entry point: environment, SFT cache
import torch
import toy_pipeline as tp
from toy_task import make_prompt, oracle_reward

ARMS = {  # name: (β, GANPO on)
    "grpo": (0.0, False),
    "grpo+ganpo": (0.0, True),
    "grpo_kl": (0.04, False),
    "grpo_kl+ganpo": (0.04, True),
}


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    steps: int
    prompts_per_step: int
    generations: int = 4
    temperature: float = 1.0
    lr: float = 5e-4
    kl_samples: int = 256


FULL = GRPOSettings(steps=80, prompts_per_step=8)
TINY = GRPOSettings(steps=3, prompts_per_step=4, kl_samples=16)


def oracle(prompts: list[str], completions: list[str], **kwargs: object) -> list[float]:
    """The verifiable reward TRL calls: the oracle on the completion's text."""
    return [oracle_reward(p, c) for p, c in zip(prompts, completions, strict=True)]


def train_grpo(arm: str, sft_dir: Path, sizes: tp.Sizes, settings: GRPOSettings, seed: int, work: Path):
    """One arm with the real ``GRPOTrainer``; returns ``(policy, trainer, attachment)``."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    beta, ganpo = ARMS[arm]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(sft_dir)
    policy = AutoModelForCausalLM.from_pretrained(sft_dir)
    rng = random.Random(50_000)  # the same training prompts for every run; the seed shuffles them
    n = settings.steps * settings.prompts_per_step
    prompts = Dataset.from_dict({"prompt": [make_prompt(rng) for _ in range(n)]})
    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    shared = {k: v for k, v in tp.shared_trainer_args(work, seed).items() if k in known}
    args = GRPOConfig(
        **shared,
        per_device_train_batch_size=settings.prompts_per_step * settings.generations,
        num_generations=settings.generations,
        max_completion_length=tp.MAX_NEW_TOKENS,
        max_steps=settings.steps,
        learning_rate=settings.lr,
        beta=beta,
        temperature=settings.temperature,
    )
    trainer = GRPOTrainer(policy, reward_funcs=oracle, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    attachment = None
    if ganpo:
        import ganpo_plugins

        ref = AutoModelForCausalLM.from_pretrained(sft_dir).eval() if beta == 0 else None
        attachment = ganpo_plugins.attach(trainer, tp.ganpo_config(sizes, seed), ref_model=ref)
    trainer.train()
    policy.eval()
    return policy, trainer, attachment


@torch.no_grad()
def kl_to_reference(policy, ref, tokenizer, settings: GRPOSettings, seed: int) -> float:
    """``KL(π ‖ π_ref) ≈ mean over y ~ π (T = 1) of Σ_t log π(y_t|…) − log π_ref(y_t|…)``, nats per sequence."""
    rng = random.Random(60_000)
    prompts = [make_prompt(rng) for _ in range(settings.kl_samples)]
    texts, ended = tp.sample(policy, tokenizer, prompts, 1.0, seed=70_000 + seed)
    ids, attn, rmask = tp._right_padded(tokenizer, prompts, texts, ended)
    logp, _, _ = tp._response_stats(policy, ids, attn, rmask)
    logp_ref, _, _ = tp._response_stats(ref, ids, attn, rmask)
    return float((logp - logp_ref).mean())


def _summary(history: list[dict]) -> dict:
    """Means over the run of what TRL and the regularizer logged."""
    keys = ("reward", "ganpo/adv_loss", "ganpo/d_pos/accuracy", "ganpo/d_neg/accuracy", "ganpo/term_skipped",
            "ganpo/completions_pos", "ganpo/completions_neg", "ganpo/completions_zero", "kl")  # fmt: skip
    out = {}
    for key in keys:
        values = [h[key] for h in history if key in h and h[key] == h[key]]
        if values:
            out[key] = sum(values) / len(values)
    return out


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
    return f"{mean:.3f} ± {std:.3f}"


def table(runs: list[dict]) -> str:
    temps = tp.TEMPERATURES
    arms = ["sft", *ARMS]
    lines = [
        "| arm | " + " | ".join(f"oracle reward @ T={t}" for t in temps)
        + " | KL to ref (nats/seq) | r(D+, oracle) @1.5 | r(D−, oracle) @1.5 | seeds |",
        "|---" * (5 + len(temps)) + "|",
    ]  # fmt: skip
    for arm in arms:
        rows = [r for r in runs if r["arm"] == arm]
        if not rows:
            continue
        cells = [_mean_std([r[f"reward@{t}"] for r in rows]) for t in temps]
        cells.append(_mean_std([r.get("kl") for r in rows]))
        cells += [_mean_std([r.get(key) for r in rows]) for key in ("r_d_pos", "r_d_neg")]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {len(rows)} |")
    lines += ["", "Per seed, GANPO − plain (oracle reward, T = 0.5 / 1.0 / 1.5):", ""]
    for beta_arm in ("grpo", "grpo_kl"):
        plain = {r["seed"]: r for r in runs if r["arm"] == beta_arm}
        ganpo = {r["seed"]: r for r in runs if r["arm"] == beta_arm + "+ganpo"}
        for seed in sorted(plain.keys() & ganpo.keys()):
            deltas = " / ".join(f"{ganpo[seed][f'reward@{t}'] - plain[seed][f'reward@{t}']:+.3f}" for t in temps)
            lines.append(f"- {beta_arm}, seed {seed}: {deltas}")
    return "\n".join(lines)


def plot(out: Path, runs: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps = tp.TEMPERATURES
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, arm in enumerate(["sft", *ARMS]):
        rows = [r for r in runs if r["arm"] == arm]
        if not rows:
            continue
        means = [sum(r[f"reward@{t}"] for r in rows) / len(rows) for t in temps]
        left.plot(temps, means, "k:" if arm == "sft" else f"C{i}-o", label=f"{arm} (n={len(rows)})")
        if arm != "sft":
            right.scatter([r["kl"] for r in rows], [r["reward@1.0"] for r in rows], color=f"C{i}", label=arm)
    left.set(xlabel="sampling temperature", ylabel="oracle reward", title="GRPO ± GANPO: reward vs temperature")
    right.set(xlabel="KL(π ‖ π_SFT), nats per sequence", ylabel="oracle reward @ T=1.0", title="reward vs KL")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "grpo_reward_vs_temperature.png", dpi=110)
    plt.close(fig)
    return ["grpo_reward_vs_temperature.png"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=run.HERE / "results", help="where results and plots go")
    parser.add_argument("--cache", type=Path, default=run.REPO / "outputs" / "toy_alignment", help="SFT and run cache")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: the same pipeline in about a minute")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: 0 1 2 3 4; tiny: 0)")
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps per run (default: 80)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--report-only", action="store_true", help="write the report from the finished runs only")
    args = parser.parse_args(argv)

    sizes = tp.TINY if args.tiny else tp.FULL
    settings = TINY if args.tiny else FULL
    if args.seeds:
        sizes = dataclasses.replace(sizes, seeds=tuple(args.seeds))
    if args.steps:
        settings = dataclasses.replace(settings, steps=args.steps)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    log = run.clock_logger(start)
    run.quiet_libraries()
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    sft_dir, _ = run.sft_and_pairs(sizes, args.cache, log)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(sft_dir)
    sft_model = AutoModelForCausalLM.from_pretrained(sft_dir).eval()
    done_dir = args.cache / "grpo_runs" / ("tiny" if args.tiny else "full")
    done_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    for seed in sizes.seeds:
        for arm in ["sft", *args.arms]:
            done = done_dir / (f"sft-{seed}.json" if arm == "sft" else f"{arm}-{seed}-{settings.steps}.json")
            if done.exists():
                runs.append(json.loads(done.read_text()))
                log(f"{arm:14s} seed {seed}: cached")
                continue
            if args.report_only:
                continue
            if arm == "sft":  # the start point every arm is compared with, on the same draws
                row = {"method": "sft", "arm": "sft", "seed": seed, "train_s": 0.0, "kl": 0.0}
                row.update(tp.evaluate(sft_model, sft_model, tokenizer, sizes, seed, None))
                row.pop("scatter", None)
                done.write_text(json.dumps(row))
                runs.append(row)
                continue
            t0 = time.time()
            policy, trainer, attachment = train_grpo(arm, sft_dir, sizes, settings, seed, args.cache / "trainer" / arm)
            row = {"method": "grpo", "arm": arm, "seed": seed, "train_s": time.time() - t0}
            row["train_log"] = _summary(trainer.state.log_history)
            row.update(tp.evaluate(policy, sft_model, tokenizer, sizes, seed, "dpo", attachment))
            row.pop("scatter", None)
            row["kl"] = kl_to_reference(policy, sft_model, tokenizer, settings, seed)
            done.write_text(json.dumps(row))
            runs.append(row)
            rewards = " ".join(f"{row[f'reward@{t}']:.3f}" for t in tp.TEMPERATURES)
            log(f"{arm:14s} seed {seed}: train {row['train_s']:.0f}s, reward@T {rewards}, KL {row['kl']:.3f}")
    meta = {
        "settings": dataclasses.asdict(settings),
        "sft": {k: v for k, v in dataclasses.asdict(sizes).items() if k in ("hidden", "layers", "sft_steps", "noise")},
        "arms": {arm: {"beta": beta, "ganpo": ganpo} for arm, (beta, ganpo) in ARMS.items()},
        "ganpo": tp.ganpo_config(sizes, 0) | {"seed": "= run seed"},
        "versions": {m.__name__: m.__version__ for m in (torch, transformers, trl)},
        "wall_s": time.time() - start,
        "command": "python examples/toy_alignment/grpo_run.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    for row in runs:
        row.pop("scatter", None)
    (args.out / "grpo_results.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    plots = plot(args.out, runs)
    text = f"# GRPO ± GANPO on the sorting task\n\n{table(runs)}\n\n" + "".join(f"![{p}]({p})\n" for p in plots)
    text += f"\nCommand: `{meta['command']}`; versions {meta['versions']}; wall {meta['wall_s']:.0f} s.\n"
    (args.out / "grpo_results.md").write_text(text)
    log(f"wrote {args.out}/grpo_results.md, grpo_results.json and plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
