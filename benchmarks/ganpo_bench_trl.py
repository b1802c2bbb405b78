"""Benchmark-only TRL run: one ``trl.DPOTrainer`` training run with a step probe.

    python benchmarks/ganpo_bench_trl.py --model DIR --data prefs.jsonl --output-dir OUT \\
        --max-length 256 --batch 2 --steps 6 [--ganpo '{"mask": "response"}']

What ``host_overhead.py --hosts trl`` runs in a subprocess, once per run: TRL's own ``DPOTrainer``
(``loss_type`` sigmoid, β 0.1, fp32, sdpa, CPU, gradient checkpointing on as TRL's ``DPOConfig``
defaults it), the same model, data and seed as the other hosts. The prompt is a user message and
each response an assistant message, so TRL applies the tokenizer's ChatML template, as Axolotl's
``chatml.default`` does. Reference: a second copy of the model, loaded here. With ``--ganpo``,
GANPO is attached by the one documented call, ``ganpo_plugins.attach(trainer, config)``;
``trainer.save_model()`` then writes ``ganpo_regularizer.pt`` to ``OUT`` (the driver checks it).
The step probe (:class:`ganpo_bench_probe.StepProbeCallback`) writes ``OUT/step_probe.json``.
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
from trl import DPOConfig, DPOTrainer


def conversational(row: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    """A prompt/chosen/rejected row as TRL's conversational preference format."""
    return {
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
    }


def load_model(path: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True, help="pairs per optimiser step")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--ganpo", type=json.loads, default=None, help="GANPO config as JSON (absent: plain DPO)")
    opts = parser.parse_args(argv)

    data = load_dataset("json", data_files=str(opts.data), split="train")
    data = data.map(conversational, remove_columns=data.column_names)
    args = DPOConfig(
        output_dir=str(opts.output_dir),
        per_device_train_batch_size=opts.batch,
        gradient_accumulation_steps=1,
        max_steps=opts.steps,
        learning_rate=1.0e-5,
        optim="adamw_torch",
        lr_scheduler_type="cosine",
        warmup_steps=0,
        beta=0.1,
        max_length=opts.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=42,
        bf16=False,
        fp16=False,
        gradient_checkpointing=True,  # TRL's DPOConfig default, stated because the title line reports it
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = DPOTrainer(
        load_model(opts.model),
        ref_model=load_model(opts.model),
        args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(opts.model),
        callbacks=[StepProbeCallback(opts.output_dir / PROBE_FILE)],
    )
    train_probed(trainer, opts.ganpo)


if __name__ == "__main__":
    main()
