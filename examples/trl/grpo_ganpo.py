"""GANPO on top of TRL's GRPOTrainer (or RLOOTrainer): build the trainer as usual, then one call.

    python examples/tiny/make_tiny_assets.py --out outputs/tiny
    python examples/trl/grpo_ganpo.py --model_name_or_path outputs/tiny/model \
        --dataset outputs/tiny/prefs.jsonl --output_dir outputs/trl-grpo-ganpo \
        --max_steps 8 --per_device_train_batch_size 4 --num_generations 4 --max_completion_length 16 \
        --logging_steps 1 --use_cpu --report_to none

Every ``GRPOConfig`` flag works (``--beta``, ``--num_iterations``, ``--steps_per_generation``,
``--gradient_accumulation_steps``, ``--save_steps``, ``--resume_from_checkpoint``, ...). The
dataset's ``prompt`` column is used. The reward here is a stand-in (how often the completion
says the letter ``--letter``): put your verifiable reward in its place. The regularizer is
configured by ``--ganpo`` (a YAML/JSON file, or inline JSON); ``--lora_r`` > 0 trains a LoRA
adapter, whose disabled pass is then the reference. ``--rloo`` trains with RLOOTrainer. Several
processes: ``torchrun --nproc_per_node N`` with the same flags.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

import ganpo_plugins


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(metadata={"help": "policy model: a path or hub id"})
    dataset: str = field(metadata={"help": "a JSON-lines file with a prompt column, or a hub dataset"})
    ganpo: str = field(default="{}", metadata={"help": "regularizer config: a YAML/JSON file or inline JSON"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains the full model"})
    letter: str = field(default="e", metadata={"help": "the stand-in reward counts this letter"})


def load_ganpo_config(value: str) -> dict:
    path = Path(value)
    return yaml.safe_load(path.read_text()) if path.is_file() else json.loads(value)


def main() -> None:
    import sys

    rloo = "--rloo" in sys.argv
    argv = [a for a in sys.argv[1:] if a != "--rloo"]
    config_class, trainer_class = (RLOOConfig, RLOOTrainer) if rloo else (GRPOConfig, GRPOTrainer)
    script, args = HfArgumentParser((ScriptArguments, config_class)).parse_args_into_dataclasses(argv)
    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(script.model_name_or_path)
    if script.dataset.endswith((".json", ".jsonl")):
        dataset = load_dataset("json", data_files=script.dataset, split="train")
    else:
        dataset = load_dataset(script.dataset, split="train")
    dataset = dataset.select_columns(["prompt"])

    def letter_count(prompts: list, completions: list[str], **kwargs: object) -> list[float]:
        return [float(c.count(script.letter)) for c in completions]

    peft_config = None
    if script.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(r=script.lora_r, lora_alpha=2 * script.lora_r, target_modules="all-linear")
    trainer = trainer_class(
        model, reward_funcs=letter_count, args=args, train_dataset=dataset, processing_class=tokenizer,
        peft_config=peft_config,
    )  # fmt: skip
    ganpo_plugins.attach(trainer, load_ganpo_config(script.ganpo))  # the one line GANPO needs
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)


if __name__ == "__main__":
    main()
