"""When does GANPO help? The regime study: regimes × {DPO, SimPO} × λ × seeds on the sorting toy.

    python examples/toy_alignment/study.py                                  # full grid → results/regimes/
    python examples/toy_alignment/study.py --tiny --out /tmp/s --cache /tmp/c   # CI smoke size

Every run writes its own file ``<out>/runs/<regime>/<method>-lam<λ>-seed<seed>.json`` (atomically); a
rerun of the same command skips the runs whose file exists, so a killed study resumes where it stopped.
λ = 0 is the plain trainer (no regularizer attached). The SFT model and the oracle pairs are built once
and cached under ``--cache`` (shared with run.py); every regime derives its training pairs from them
(regimes.py). At the end (and with ``--report-only``) the tables, JSON and plots are written from
whatever run files exist (study_report.py). See README.md, section "When does GANPO help?".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import regimes  # noqa: E402
import run as toy_run  # noqa: E402  (sets the offline environment before torch loads)
import study_report  # noqa: E402
import toy_pipeline as tp  # noqa: E402
import toy_report  # noqa: E402

METHODS = ("dpo", "simpo")
WEIGHTS = (0.0, 0.1, 0.3, 1.0, 3.0)
TINY_WEIGHTS = (0.0, 1.0)
TINY_SEEDS = (0, 1)
TINY_LITTLE_PAIRS = 16  # the tiny pair set has ~40 pairs: "little" keeps 16 of them
DRIFT_PAIRS = 256  # chosen/rejected log-probability drift is measured on the first training pairs


@dataclasses.dataclass(frozen=True)
class RunSpec:
    regime: str
    method: str
    weight: float
    seed: int

    def path(self, out: Path) -> Path:
        return out / "runs" / self.regime / f"{self.method}-lam{self.weight:g}-seed{self.seed}.json"


def grid(regime_names: list[str], methods: list[str], weights: list[float], seeds: list[int]) -> list[RunSpec]:
    """Every run, seeds outermost: a study stopped early has every cell for its first seeds."""
    return [
        RunSpec(r, m, w, s) for s in seeds for r in regime_names for m in methods for w in weights
    ]  # fmt: skip


def study_regimes(tiny: bool) -> dict[str, regimes.Regime]:
    if not tiny:
        return dict(regimes.BY_NAME)
    return {
        name: dataclasses.replace(r, n_pairs=TINY_LITTLE_PAIRS) if r.n_pairs else r
        for name, r in regimes.BY_NAME.items()
    }


def write_atomically(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def discriminator_diagnostics(history: list[dict]) -> dict[str, float]:
    """Per discriminator, from a ``logging_steps=1`` log: the share of its steps that were saturated
    (accuracy ≤ 0.51 or ≥ 0.99, the package's rule) and the longest saturated run."""
    out: dict[str, float] = {}
    for side in ("pos", "neg"):
        acc = [h[f"ganpo/d_{side}/accuracy"] for h in history if f"ganpo/d_{side}/accuracy" in h]
        runs = [h[f"ganpo/d_{side}/saturated_steps"] for h in history if f"ganpo/d_{side}/saturated_steps" in h]
        if acc:
            out[f"d_{side}_acc"] = sum(acc) / len(acc)
            out[f"d_{side}_acc_last_half"] = sum(acc[len(acc) // 2 :]) / len(acc[len(acc) // 2 :])
            out[f"d_{side}_saturated_share"] = sum(a <= 0.51 or a >= 0.99 for a in acc) / len(acc)
        if runs:
            out[f"d_{side}_saturated_max_run"] = max(runs)
    return out


def log_prob_drift(policy, ref, tokenizer, pairs: list[dict[str, str]]) -> dict[str, float]:
    """Mean over (the first ``DRIFT_PAIRS``) training pairs of log π(y|x) − log π_ref(y|x), summed over
    the response tokens, for the labelled chosen and the labelled rejected response."""
    import torch

    pairs = pairs[:DRIFT_PAIRS]
    prompts = [p["prompt"] for p in pairs]
    out = {}
    with torch.no_grad():
        for side in ("chosen", "rejected"):
            ids, attn, rmask = tp._right_padded(tokenizer, prompts, [p[side] for p in pairs])
            logp = tp._response_stats(policy, ids, attn, rmask)[0]
            logp_ref = tp._response_stats(ref, ids, attn, rmask)[0]
            out[f"drift_{side}"] = float((logp - logp_ref).mean())
    return out


# --- worker side: one process per worker, the SFT model loaded once ---------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(sft_dir: str, threads: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    torch.set_num_threads(threads)
    toy_run.quiet_libraries()
    _WORKER["tokenizer"] = PreTrainedTokenizerFast.from_pretrained(sft_dir)
    _WORKER["sft"] = AutoModelForCausalLM.from_pretrained(sft_dir).eval()
    _WORKER["sft_dir"] = sft_dir


def run_one(spec: RunSpec, sizes: tp.Sizes, pairs: list[dict[str, str]], out: Path, cache: Path) -> str:
    """Train and evaluate one run, write its file; returns a one-line summary."""
    t0, cpu0 = time.time(), time.process_time()
    tokenizer, sft = _WORKER["tokenizer"], _WORKER["sft"]
    work = cache / "trainer" / f"{spec.regime}-{spec.method}-{spec.weight:g}-{spec.seed}"
    sizes = dataclasses.replace(sizes, ganpo_weight=spec.weight)
    policy, trainer, attachment = tp.train_preference(
        spec.method, spec.weight > 0, _WORKER["sft_dir"], pairs, sizes, spec.seed, work, logging_steps=1
    )
    train_s, train_cpu_s = time.time() - t0, time.process_time() - cpu0
    history = trainer.state.log_history
    row: dict[str, Any] = dataclasses.asdict(spec) | {"train_s": train_s, "train_cpu_s": train_cpu_s}
    row["steps"] = trainer.state.global_step
    row["train_log"] = toy_report.summarize_log(history)
    row |= discriminator_diagnostics(history)
    row |= log_prob_drift(policy, sft, tokenizer, pairs)
    evaluation = tp.evaluate(policy, sft, tokenizer, sizes, spec.seed, spec.method, attachment)
    evaluation.pop("scatter")
    row |= evaluation
    # Wall seconds depend on the machine's load; CPU seconds (one torch thread) do not, much.
    row["eval_s"], row["eval_cpu_s"] = time.time() - t0 - train_s, time.process_time() - cpu0 - train_cpu_s
    write_atomically(spec.path(out), row)
    shutil.rmtree(work, ignore_errors=True)
    return (
        f"{spec.regime:8s} {spec.method:5s} λ={spec.weight:<4g} seed {spec.seed}: train {train_s:.0f}s "
        f"eval {row['eval_s']:.0f}s, " + study_report.brief(row)
    )


def evaluate_sft(seed: int, sizes: tp.Sizes, out: Path) -> str:
    """The SFT start point's evaluation row for ``seed`` (KL and drift 0 by construction)."""
    t0, cpu0 = time.time(), time.process_time()
    row: dict[str, Any] = {"regime": "sft", "method": "sft", "weight": 0.0, "seed": seed}
    evaluation = tp.evaluate(_WORKER["sft"], _WORKER["sft"], _WORKER["tokenizer"], sizes, seed, None)
    evaluation.pop("scatter")
    row |= evaluation | {"eval_s": time.time() - t0, "eval_cpu_s": time.process_time() - cpu0}
    write_atomically(out / "runs" / "sft" / f"sft-seed{seed}.json", row)
    return f"sft seed {seed}: " + study_report.brief(row)


# --- driver ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "regimes", help="run files, tables, plots")
    parser.add_argument("--cache", type=Path, default=toy_run.REPO / "outputs" / "toy_alignment")
    parser.add_argument("--tiny", action="store_true", help="CI smoke size: tiny model, λ ∈ {0, 1}, seeds 0 1")
    parser.add_argument("--regimes", nargs="+", choices=list(regimes.BY_NAME), default=list(regimes.BY_NAME))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--weights", type=float, nargs="+", default=None, help="λ values, 0 = plain (default 0 0.1 0.3 1 3)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0-4)")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel, one process each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--report-only", action="store_true", help="only write the tables and plots from the run files")
    args = parser.parse_args(argv)

    sizes = tp.TINY if args.tiny else tp.FULL
    weights = args.weights or list(TINY_WEIGHTS if args.tiny else WEIGHTS)
    seeds = args.seeds or list(TINY_SEEDS if args.tiny else sizes.seeds)
    if any(w < 0 for w in weights):
        parser.error(f"--weights must be ≥ 0 (0 = plain), got {weights}")
    if 0.0 not in weights:
        parser.error("--weights must include 0: every difference is taken against the plain run of the same seed")
    sizes = dataclasses.replace(sizes, seeds=tuple(seeds))
    setup = study_regimes(args.tiny)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    log = toy_run.clock_logger(start)
    toy_run.quiet_libraries()

    sft_dir, oracle_pairs = toy_run.sft_and_pairs(sizes, args.cache, log)
    regime_pairs = {name: regimes.apply(setup[name], oracle_pairs) for name in args.regimes}
    label_stats = {name: regimes.label_stats(p) for name, p in regime_pairs.items()}
    specs = grid(args.regimes, args.methods, weights, seeds)
    pending = [s for s in specs if not s.path(out).exists()]
    sft_pending = [s for s in seeds if not (out / "runs" / "sft" / f"sft-seed{s}.json").exists()]
    if args.report_only:
        pending, sft_pending = [], []
    log(f"{len(specs)} runs in the grid, {len(specs) - len(pending)} already done, {len(pending)} to go")

    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    init = (str(sft_dir), args.threads)
    with ProcessPoolExecutor(max(1, args.workers), mp_context=ctx, initializer=_init_worker, initargs=init) as pool:
        futures = [pool.submit(evaluate_sft, s, sizes, out) for s in sft_pending]
        for spec in pending:
            rsizes = dataclasses.replace(sizes, epochs=setup[spec.regime].epochs or sizes.epochs)
            futures.append(pool.submit(run_one, spec, rsizes, regime_pairs[spec.regime], out, args.cache))
        for done, future in enumerate(as_completed(futures), 1):
            log(f"[{done}/{len(futures)}] {future.result()}")

    wall = time.time() - start
    meta = {
        "sizes": dataclasses.asdict(sizes),
        "regimes": {name: dataclasses.asdict(setup[name]) | {"labels": label_stats[name]} for name in args.regimes},
        "oracle_pairs": len(oracle_pairs),
        "ganpo": tp.ganpo_config(sizes, 0) | {"weight": "λ of the row", "seed": "= run seed"},
        "dpo_beta": tp.DPO_BETA,
        "simpo_beta": tp.SIMPO_BETA,
        "simpo_gamma": tp.SIMPO_GAMMA,
        "temperatures": list(tp.TEMPERATURES),
        "workers": args.workers,
        "threads": args.threads,
        "command": "python examples/toy_alignment/study.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    if pending or sft_pending:
        study_report.record_invocation(out, start, wall, len(pending) + len(sft_pending), args.workers)
    study_report.write(out, meta)
    log(f"wrote {out}: per-regime tables, JSON and plots; this invocation {wall:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
