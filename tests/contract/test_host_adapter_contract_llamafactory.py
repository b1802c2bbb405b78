"""The host-adapter contract (host_harness.py) on LLaMA-Factory's ``CustomDPOTrainer`` (tox -e llamafactory).

The harness builds the trainer from LLaMA-Factory's own pieces, called as its ``run_dpo`` calls them
(arguments parsed by ``get_train_args``, its tokenizer, template, dataset from ``dataset_info.json``,
model, reference and pairwise collator), and leaves training to the suite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from contract.host_harness import HostAdapterContract, HostHarness, Run, TransformersTrainerHarness
from llamafactory_dataset import write_ranking_dataset

pytest.importorskip("llamafactory.train.tuner", reason="needs LLaMA-Factory: tox -e llamafactory")


class LlamaFactoryHarness(TransformersTrainerHarness):
    """``stage: dpo``, ``pref_loss: sigmoid``, full fine-tuning of the tiny Llama, one pair per micro-step."""

    adapter = "llamafactory"
    margin_key = "rewards/margins"

    def __init__(self, assets: Path, dataset_dir: Path) -> None:
        self.assets = assets
        self.dataset_dir = dataset_dir

    def build(self, run: Run) -> Any:
        from llamafactory.data import PairwiseDataCollatorWithPadding, get_dataset, get_template_and_fix_tokenizer
        from llamafactory.extras.constants import IGNORE_INDEX
        from llamafactory.hparams import get_train_args
        from llamafactory.model import load_model, load_tokenizer
        from llamafactory.train.dpo.trainer import CustomDPOTrainer
        from llamafactory.train.trainer_utils import create_ref_model

        spec, workdir = run.spec, run.workdir
        saving = {"save_strategy": "no"} if spec.save_at is None else {"save_steps": spec.save_at}
        model_args, data_args, training_args, finetuning_args, _ = get_train_args(
            {
                "model_name_or_path": str(self.assets / "model"), "stage": "dpo", "do_train": True,
                "finetuning_type": "full", "pref_beta": 0.1, "dataset": "tiny_prefs",
                "dataset_dir": str(self.dataset_dir), "template": "empty", "cutoff_len": 128,
                "output_dir": str(workdir / "out"), "logging_steps": 1, "report_to": "none",
                "per_device_train_batch_size": 1, "gradient_accumulation_steps": spec.accumulation,
                "max_steps": spec.steps, "learning_rate": 1e-3, "disable_shuffling": True, "use_cpu": True,
                "bf16": False, "seed": 42, **saving,
            }
        )  # fmt: skip
        tokenizer_module = load_tokenizer(model_args)
        template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
        dataset_module = get_dataset(template, model_args, data_args, training_args, stage="rm", **tokenizer_module)
        model = load_model(tokenizer_module["tokenizer"], model_args, finetuning_args, is_trainable=True)
        collator = PairwiseDataCollatorWithPadding(
            template=template, model=model, pad_to_multiple_of=8, label_pad_token_id=IGNORE_INDEX, **tokenizer_module
        )
        trainer = CustomDPOTrainer(
            model=model, ref_model=create_ref_model(model_args, finetuning_args), args=training_args,
            finetuning_args=finetuning_args, data_collator=collator, **dataset_module, **tokenizer_module,
        )  # fmt: skip
        return trainer


class TestLlamaFactoryCustomDPOTrainer(HostAdapterContract):
    @pytest.fixture(scope="class")
    @classmethod
    def harness(cls, tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> HostHarness:
        folder = tmp_path_factory.mktemp("lf_contract_data")
        return LlamaFactoryHarness(
            tiny_assets, write_ranking_dataset(folder, "tiny_prefs", tiny_assets / "prefs.jsonl")
        )
