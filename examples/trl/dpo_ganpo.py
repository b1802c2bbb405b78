"""GANPO on top of TRL's DPOTrainer: build the trainer as usual, then one call.

    python examples/tiny/make_tiny_assets.py --out outputs/tiny
    python examples/trl/dpo_ganpo.py --model_name_or_path outputs/tiny/model \
        --dataset outputs/tiny/prefs.jsonl --output_dir outputs/trl-ganpo \
        --max_steps 8 --per_device_train_batch_size 2 --logging_steps 1 --use_cpu --report_to none

Every ``DPOConfig`` flag works (``--loss_type``, ``--gradient_accumulation_steps``,
``--save_steps``, ``--resume_from_checkpoint``, ...). The regularizer is configured by
``--ganpo`` (a YAML/JSON file, or inline JSON); ``--lora_r`` > 0 trains a LoRA adapter, whose
disabled pass is then the reference. Several processes: ``torchrun --nproc_per_node N`` with
the same flags.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from datasets import load_dataset
from ganpo_trl import attach_regularizer
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser
from trl import DPOConfig, DPOTrainer


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(metadata={"help": "policy (and reference) model: a path or hub id"})
    dataset: str = field(metadata={"help": "a JSON-lines file of prompt/chosen/rejected rows, or a hub dataset"})
    ganpo: str = field(default="{}", metadata={"help": "regularizer config: a YAML/JSON file or inline JSON"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains the full model"})


def load_ganpo_config(value: str) -> dict:
    path = Path(value)
    return yaml.safe_load(path.read_text()) if path.is_file() else json.loads(value)


def main() -> None:
    script, args = HfArgumentParser((ScriptArguments, DPOConfig)).parse_args_into_dataclasses()
    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(script.model_name_or_path)
    if script.dataset.endswith((".json", ".jsonl")):
        dataset = load_dataset("json", data_files=script.dataset, split="train")
    else:
        dataset = load_dataset(script.dataset, split="train")
    peft_config = None
    if script.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(r=script.lora_r, lora_alpha=2 * script.lora_r, target_modules="all-linear")
    trainer = DPOTrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    attach_regularizer(trainer, load_ganpo_config(script.ganpo))  # the one line GANPO needs
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)


if __name__ == "__main__":
    main()
