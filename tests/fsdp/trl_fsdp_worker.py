"""One torchrun worker of the FSDP tests: trains several tiny DPO + GANPO runs, one after the
other, in one process group (a process group and the imports cost more than a run here).

    torchrun --nproc_per_node N trl_fsdp_worker.py ASSETS OUT RUNS_JSON

Each run is ``{"name", "fsdp": 0 | 1 | 2, "lora", "reference", "steps", "save_steps",
"state_dict_type", "save_every_rank", "resume", "parallelism"}`` (``parallelism``: accelerate's
``ParallelismConfig`` sizes) (``fsdp: 0`` is DDP; ``reference``: ``trainer`` — TRL's own
reference forward —, ``precompute`` — ``precompute_ref_log_probs``, the adapter's own forward
of the frozen copy or the adapter-disabled policy —, or ``sharded`` — ``precompute_ref_log_probs``
with a ``ref_model`` TRL shards, the adapter's own forward through it). Each run writes
``OUT/<name>/result.json`` from every rank: how the models were wrapped, the regularizer's
process group, the training logs, and on resume the regularizer state right after it loaded.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from datasets import load_dataset
from ganpo_trl import attach_regularizer
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer
from trl.models import prepare_fsdp

GANPO = {"discriminator": {"d_model": 16, "num_heads": 2, "ffn_size": 32, "num_layers": 1}}


class _LoadedState(TrainerCallback):
    """Keeps the regularizer state as it is when training begins (after a resume loaded it);
    added after the adapter's build callback, so it runs after the build."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.state: dict[str, Any] | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.state = _to_lists(self.handle.runner.regularizer.state_dict())


def _to_lists(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _to_lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_lists(v) for v in value]
    return value


def _fresh_accelerate() -> None:
    """A new ``AcceleratorState`` per run (the process group stays): each run brings its own
    FSDP plugin, and accelerate keeps the first one it saw otherwise."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()


def _wrapping(model: Any) -> str:
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if isinstance(model, FSDPModule):
        return "fsdp2"
    return "fsdp1" if isinstance(model, FSDP) else "none"


def train(spec: dict[str, Any], assets: Path, out: Path) -> None:
    _fresh_accelerate()
    name = spec["name"]
    tokenizer = AutoTokenizer.from_pretrained(assets / "model")
    dataset = load_dataset("json", data_files=str(assets / "prefs.jsonl"), split="train").select(range(16))
    model = AutoModelForCausalLM.from_pretrained(assets / "model")
    fsdp: dict[str, Any] = {}
    if spec["fsdp"]:
        fsdp = {
            "fsdp": True,
            "fsdp_config": {
                "version": spec["fsdp"],
                "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
                "state_dict_type": spec.get("state_dict_type", "FULL_STATE_DICT"),
                # FSDP1's broadcast of rank 0's weights looks for an accelerator; every rank loads the same file
                **({"sync_module_states": False} if spec["fsdp"] == 1 else {}),
            },
        }
    if "parallelism" in spec:  # accelerate's device mesh, e.g. HSDP: dp_replicate_size × dp_shard_size
        from accelerate.parallelism_config import ParallelismConfig

        fsdp["parallelism_config"] = ParallelismConfig(**spec["parallelism"])
    args = DPOConfig(
        output_dir=str(out / name), use_cpu=True, per_device_train_batch_size=2, max_steps=spec["steps"],
        logging_steps=1, save_steps=spec.get("save_steps", spec["steps"]), report_to="none", max_length=64,
        seed=0, learning_rate=1e-3, precompute_ref_log_probs=spec["reference"] != "trainer",
        disable_dropout=True, **fsdp,
    )  # fmt: skip
    peft_config = None
    if spec["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    trainer = DPOTrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    if spec["fsdp"]:
        assert trainer.accelerator.distributed_type == "FSDP", trainer.accelerator.distributed_type
    ref_model = None
    if spec["reference"] == "sharded":
        ref_model = AutoModelForCausalLM.from_pretrained(assets / "model").eval().requires_grad_(False)
        if spec["fsdp"]:
            ref_model = prepare_fsdp(ref_model, trainer.accelerator)  # TRL's own reference sharding
    config = {**GANPO, "save_every_rank": spec.get("save_every_rank", True)}
    handle = attach_regularizer(trainer, config, ref_model=ref_model)
    loaded = _LoadedState(handle)
    trainer.add_callback(loaded)
    trainer.train(resume_from_checkpoint=spec.get("resume"))
    runner = handle.runner
    assert runner is not None
    result = {
        "policy": _wrapping(trainer.model),
        "ref_model": None if trainer.ref_model is None else _wrapping(trainer.ref_model),
        "own_reference": None if handle.reference is None else _wrapping(handle.reference),
        "group_size": dist.get_world_size(runner.group),
        "log_history": trainer.state.log_history,
        "loaded_state": loaded.state if spec.get("resume") else None,
    }
    rank = dist.get_rank()
    (out / name / f"result.rank{rank}.json").write_text(json.dumps(result))
    handle.detach()
    del trainer, model, ref_model
    dist.barrier()


def main() -> None:
    assets, out, runs = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    for spec in runs:
        if os.environ.get("RANK") == "0":
            print(f"=== run {spec['name']}", flush=True)
        train(spec, assets, out)


if __name__ == "__main__":
    main()
