"""The torchrun worker of the GRPO FSDP2 test: tiny GRPO + GANPO runs under accelerate's FSDP2
(through ``cpu_fsdp_shim``), one after the other in one process group.

    torchrun --nproc_per_node 2 trl_grpo_fsdp_worker.py ASSETS OUT RUNS_JSON

Each run is ``{"name", "lora", "beta"}``; it writes ``OUT/<name>/result.rank<r>.json`` (how the models
were wrapped, the training logs) and saves the regularizer state of every rank at the last step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer
from trl_fsdp_worker import _fresh_accelerate, _wrapping

import ganpo_plugins

GANPO = {"save_every_rank": True, "discriminator": {"d_model": 16, "num_heads": 2, "ffn_size": 32, "num_layers": 1}}


def reward(prompts: list[Any], completions: list[str], **kwargs: Any) -> list[float]:
    return [float(c.count("e")) for c in completions]


def train(spec: dict[str, Any], assets: Path, out: Path) -> None:
    _fresh_accelerate()
    name = spec["name"]
    tokenizer = AutoTokenizer.from_pretrained(assets / "model")
    prompts = load_dataset("json", data_files=str(assets / "prefs.jsonl"), split="train").select(range(16))
    fsdp = {"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"], "state_dict_type": "FULL_STATE_DICT"}
    args = GRPOConfig(
        output_dir=str(out / name), use_cpu=True, per_device_train_batch_size=4, num_generations=4,
        max_completion_length=8, max_steps=2, logging_steps=1, save_steps=2, report_to="none", seed=0,
        learning_rate=1e-3, beta=spec["beta"], fsdp=True, fsdp_config=fsdp,
    )  # fmt: skip
    peft_config = None
    if spec["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    model = AutoModelForCausalLM.from_pretrained(assets / "model")
    trainer = GRPOTrainer(
        model, reward_funcs=reward, args=args, train_dataset=prompts.select_columns(["prompt"]),
        processing_class=tokenizer, peft_config=peft_config,
    )  # fmt: skip
    assert trainer.accelerator.distributed_type == "FSDP", trainer.accelerator.distributed_type
    handle = ganpo_plugins.attach(trainer, GANPO)
    trainer.train()
    result = {
        "policy": _wrapping(trainer.model),
        "ref_model": None if trainer.ref_model is None else _wrapping(trainer.ref_model),
        "reference": None if handle.reference is None else _wrapping(handle.reference),
        "log_history": trainer.state.log_history,
    }
    (out / name / f"result.rank{dist.get_rank()}.json").write_text(json.dumps(result))
    handle.detach()
    dist.barrier()


def main() -> None:
    assets, out, runs = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    for spec in runs:
        train(spec, assets, out)


if __name__ == "__main__":
    main()
