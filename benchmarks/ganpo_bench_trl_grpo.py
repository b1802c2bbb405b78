"""Benchmark-only TRL run: one ``trl.GRPOTrainer`` training run with a step probe.

    python benchmarks/ganpo_bench_trl_grpo.py --model DIR --data prefs.jsonl --output-dir OUT \\
        --prompts 2 --generations 4 --max-completion 64 --steps 6 [--ganpo '{"mask": "response"}']

What ``host_overhead.py --hosts trl-grpo`` runs in a subprocess, once per run: TRL's own
``GRPOTrainer`` (β = 0, the TRL default: no reference model; fp32, sdpa, CPU, transformers
generation, no vLLM), ``--prompts`` prompts × ``--generations`` completions per optimiser step, the
same model, prompts and seed every run. The reward is a stand-in (how often the completion says
``e``): what matters here is the cost, not the learning. With ``--ganpo``, GANPO is attached by the
one documented call, ``ganpo_plugins.attach(trainer, config)`` (the reference: a frozen copy of the
initial policy); ``trainer.save_model()`` then writes ``ganpo_regularizer.pt`` to ``OUT`` (the driver
checks it). The step probe (:class:`ganpo_bench_probe.StepProbeCallback`) writes ``OUT/step_probe.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from datasets import load_dataset
from ganpo_bench_probe import PROBE_FILE, StepProbeCallback, train_probed
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer


def letter_e(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [float(text.count("e")) for text in texts]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--prompts", type=int, required=True, help="prompts per optimiser step")
    parser.add_argument("--generations", type=int, required=True, help="completions per prompt")
    parser.add_argument("--max-completion", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--ganpo", type=json.loads, default=None, help="GANPO config as JSON (absent: plain GRPO)")
    opts = parser.parse_args(argv)

    data = load_dataset("json", data_files=str(opts.data), split="train")
    data = data.map(
        lambda row: {"prompt": [{"role": "user", "content": row["prompt"]}]}, remove_columns=data.column_names
    )
    args = GRPOConfig(
        output_dir=str(opts.output_dir),
        per_device_train_batch_size=opts.prompts * opts.generations,
        num_generations=opts.generations,
        max_completion_length=opts.max_completion,
        gradient_accumulation_steps=1,
        max_steps=opts.steps,
        learning_rate=1.0e-5,
        beta=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=42,
        bf16=False,
        fp16=False,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    model = AutoModelForCausalLM.from_pretrained(opts.model, dtype=torch.float32, attn_implementation="sdpa")
    trainer = GRPOTrainer(
        model,
        reward_funcs=letter_e,
        args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(opts.model),
        callbacks=[StepProbeCallback(opts.output_dir / PROBE_FILE)],
    )
    train_probed(trainer, opts.ganpo)


if __name__ == "__main__":
    main()
