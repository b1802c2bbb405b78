"""Toy reproduction of GANPO's claims: DPO vs GANPO(DPO) and SimPO vs GANPO(SimPO) on a task with an oracle.

    python examples/toy_alignment/run.py --out examples/toy_alignment/results          # full, ~10 min
    python examples/toy_alignment/run.py --tiny --out /tmp/toy                          # smoke, < 1 min

Stages: SFT a tiny Llama from scratch on noisy demonstrations of "sort the letters" → sample pairs from
it and label them with the oracle → train each arm × seed with the real TRL trainer → sample at
temperatures 0.5/1.0/1.5 and score with the oracle → correlate the trained D+ with the oracle at 1.5.
The SFT model and the pairs are cached under ``--cache`` (keyed by their settings) and shared by all arms.
Writes ``results.json``, ``results.md`` and PNG plots into ``--out``. See README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]  # its outputs/ is git-ignored: cached models never land in a commit
sys.path.insert(0, str(HERE))
# Offline, no telemetry: the repository's offline.env (KEY=VALUE lines, # comments).
for line in (REPO / "offline.env").read_text().splitlines():
    if line and not line.startswith("#"):
        os.environ.setdefault(*line.split("=", 1))

import torch  # noqa: E402
import toy_pipeline as tp  # noqa: E402
import toy_report  # noqa: E402

METHODS = ("dpo", "simpo")
ARMS = ("base", "ganpo")


def _stage_key(sizes: tp.Sizes) -> str:
    """Settings that determine the SFT model and the pairs (not the preference-training ones)."""
    fields = ("hidden", "layers", "sft_steps", "sft_batch", "sft_lr", "noise", "pair_prompts")
    fields += ("samples_per_prompt", "min_gap")
    blob = json.dumps({f: getattr(sizes, f) for f in fields}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def sft_and_pairs(sizes: tp.Sizes, cache: Path, log) -> tuple[Path, list[dict[str, str]]]:
    stage = cache / f"stage-{_stage_key(sizes)}"
    sft_dir, pairs_file = stage / "sft", stage / "pairs.jsonl"
    if (sft_dir / "config.json").exists() and pairs_file.exists():
        log(f"reusing cached SFT model and pairs in {stage}")
        return sft_dir, [json.loads(line) for line in pairs_file.read_text().splitlines()]
    t0 = time.time()
    log(f"SFT: hidden {sizes.hidden}, {sizes.layers} layers, {sizes.sft_steps} steps × {sizes.sft_batch}")
    model, tokenizer = tp.sft(sizes, seed=0, log=log)
    sft_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(sft_dir)
    tokenizer.save_pretrained(sft_dir)
    log(f"SFT done in {time.time() - t0:.0f}s")
    t0 = time.time()
    pairs = tp.label_pairs(model, tokenizer, sizes, seed=0)
    pairs_file.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    log(f"pairs: {len(pairs)} of {sizes.pair_prompts} prompts kept in {time.time() - t0:.0f}s")
    return sft_dir, pairs


def sft_baseline(sft_dir: Path, sizes: tp.Sizes, log: Callable[[str], None]) -> tuple[Any, Any, list[dict]]:
    """The SFT tokenizer and model, and the model's evaluation rows (one per seed): the baseline
    every arm of a study is compared with."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(sft_dir)
    sft_model = AutoModelForCausalLM.from_pretrained(sft_dir).eval()
    runs: list[dict] = []
    for seed in sizes.seeds:
        row = {"method": "sft", "arm": "sft", "seed": seed, "train_s": 0.0}
        row.update(tp.evaluate(sft_model, sft_model, tokenizer, sizes, seed, None))
        runs.append(row)
    log("SFT evaluated: " + toy_report.brief(runs[-1]))
    return tokenizer, sft_model, runs


def clock_logger(start: float) -> Callable[[str], None]:
    """``log(msg)``: print ``msg`` with the seconds since ``start`` (a ``time.time()``), flushed."""

    def log(msg: str) -> None:
        print(f"[{time.time() - start:7.1f}s] {msg}", flush=True)

    return log


def quiet_libraries() -> None:
    """No progress bars or info lines from datasets and transformers: the study prints its own."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where results and plots go")
    parser.add_argument(
        "--cache", type=Path, default=REPO / "outputs" / "toy_alignment", help="SFT model, pairs, trainer scratch"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: the same pipeline in ~1-2 minutes (CI)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="preference-training seeds")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--ganpo-weight", type=float, default=None, help="λ of the GANPO arms (default: 1.0)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy machine)")
    args = parser.parse_args(argv)

    sizes = tp.TINY if args.tiny else tp.FULL
    if args.seeds:
        sizes = dataclasses.replace(sizes, seeds=tuple(args.seeds))
    if args.ganpo_weight is not None:
        sizes = dataclasses.replace(sizes, ganpo_weight=args.ganpo_weight)
    torch.set_num_threads(args.threads)
    out: Path = args.out
    cache: Path = args.cache
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    log = clock_logger(start)
    quiet_libraries()
    import transformers
    import trl

    sft_dir, pairs = sft_and_pairs(sizes, cache, log)
    tokenizer, sft_model, runs = sft_baseline(sft_dir, sizes, log)
    for method in args.methods:
        for seed in sizes.seeds:
            for arm in args.arms:
                t0 = time.time()
                work = cache / "trainer" / f"{method}-{arm}-{seed}"
                ganpo = arm == "ganpo"
                policy, trainer, attachment = tp.train_preference(method, ganpo, sft_dir, pairs, sizes, seed, work)
                train_s = time.time() - t0
                row = {"method": method, "arm": arm, "seed": seed, "train_s": train_s}
                row["train_log"] = toy_report.summarize_log(trainer.state.log_history)
                row.update(tp.evaluate(policy, sft_model, tokenizer, sizes, seed, method, attachment))
                runs.append(row)
                log(f"{method:5s} {arm:5s} seed {seed}: train {train_s:.0f}s, " + toy_report.brief(row))
    wall = time.time() - start
    meta = {
        "sizes": dataclasses.asdict(sizes),
        "pairs": len(pairs),
        "ganpo": tp.ganpo_config(sizes, 0) | {"seed": "= run seed"},
        "dpo_beta": tp.DPO_BETA,
        "simpo_beta": tp.SIMPO_BETA,
        "simpo_gamma": tp.SIMPO_GAMMA,
        "temperatures": list(tp.TEMPERATURES),
        "threads": args.threads,
        "versions": {m.__name__: m.__version__ for m in (torch, transformers, trl)},
        "wall_s": wall,
        "command": "python examples/toy_alignment/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    toy_report.write(out, runs, meta)
    log(f"wrote {out}/results.md, results.json and plots; total {wall:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
