"""APO reward-model training through the real Axolotl CLI (``reward_model: true`` + the APO plugin)."""

from __future__ import annotations

import importlib.util
import math
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# "axolotl.cli", not "axolotl": from tests/, the folder tests/host_axolotl passes for a namespace package
pytest.importorskip("axolotl.cli", reason="needs Axolotl: tox -e axolotl-oldest")

import yaml
from ganpo_axolotl.apo import APOArgs
from pydantic import ValidationError

from ganpo_plugins.apo.data import apo_pairs, golden_responses, human_pairs, read_jsonl, write_jsonl

pytestmark = pytest.mark.axolotl

EXAMPLE = "examples/apo/axolotl_rm_apo.yml"
REPO = Path(__file__).resolve().parents[2]


def make_tiny_reward_model(assets: Path) -> Path:
    spec = importlib.util.spec_from_file_location("tiny_round", REPO / "examples/apo/tiny_round.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny_reward_model(assets)


def test_axolotl_trains_the_reward_model_with_the_apo_loss(
    tiny_assets: Path,
    tmp_path: Path,
    example_config: Callable[..., dict[str, Any]],
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    prefs = read_jsonl(tiny_assets / "prefs.jsonl")[:8]
    samples = [{"prompt": [{"role": "user", "content": r["prompt"]}], "samples": [r["rejected"], r["chosen"][:4]]}
               for r in prefs]  # fmt: skip
    rows = human_pairs(prefs, "prefs", chat=True) + apo_pairs(samples, golden_responses(prefs, "p", "chosen"), "s", 2)
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    rm = make_tiny_reward_model(tiny_assets)  # a saved score head: the same initial rewards here and in Axolotl
    cfg = example_config(
        EXAMPLE,
        {
            "base_model": str(rm),
            "datasets": [{"path": str(tmp_path / "pairs.jsonl"), "ds_type": "json", "type": "ganpo_axolotl.apo"}],
            "dataset_prepared_path": str(tmp_path / "prepared"),
            "output_dir": str(tmp_path / "out"),
            # one step over every pair: the logged loss is the APO loss of the initial model on all of them
            "micro_batch_size": len(rows),
            "max_steps": 1,
            "save_strategy": "steps",
            "save_steps": 1,
        },
    )
    (tmp_path / "cfg.yml").write_text(yaml.safe_dump(cfg))
    result = run_cli(["-m", "axolotl.cli.train", str(tmp_path / "cfg.yml")], log=tmp_path / "log.txt")
    assert result.returncode == 0, result.stdout[-4000:]
    assert "'apo/accuracy_apo'" in result.stdout  # logged by the APO trainer, not Axolotl's own

    # the pairs Axolotl trained on carry the flags and exactly the tokens `ganpo-apo score` reads
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from ganpo_plugins.apo.hf import reward_input_ids

    (prepared,) = [p for p in (tmp_path / "prepared").iterdir() if p.is_dir()]
    trained = load_from_disk(str(prepared))
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets / "model")
    expected = {
        (tuple(reward_input_ids(tokenizer, r["prompt"], r["chosen"][0]["content"])),
         tuple(reward_input_ids(tokenizer, r["prompt"], r["rejected"][0]["content"])), r["is_apo"])
        for r in rows
    }  # fmt: skip
    got = {(tuple(ex["chosen_ids"]), tuple(ex["rejected_ids"]), ex["is_apo"]) for ex in trained}
    assert got == expected
    assert sum(trained["is_apo"]) == 16

    # the loss Axolotl logged is APO's, by value: Σ_i w_i · (−log σ(r_chosen − r_rejected)) / N with
    # w = c_human for human pairs and c_apo / k for APO pairs (arXiv 2311.08045; docs/apo.md)
    import json

    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(rm).eval()
    apo = cfg["apo"]
    with torch.no_grad():
        terms = []
        for ex in trained:
            chosen, rejected = (float(model(torch.tensor([ex[key]])).logits) for key in ("chosen_ids", "rejected_ids"))
            weight = apo["c_apo"] / apo["samples_per_prompt"] if ex["is_apo"] else apo["c_human"]
            terms.append(weight * -math.log(1 / (1 + math.exp(-(chosen - rejected)))))
    history = json.loads((tmp_path / "out" / "checkpoint-1" / "trainer_state.json").read_text())["log_history"]
    (logged,) = [entry["loss"] for entry in history if "loss" in entry]
    assert logged == pytest.approx(sum(terms) / len(terms), rel=1e-4)


def test_apo_block_needs_reward_model_and_valid_weights() -> None:
    with pytest.raises(ValidationError, match=r"apo: APO trains a reward model; set `reward_model: true`"):
        APOArgs.model_validate({"apo": {"c_apo": 0.1}})
    with pytest.raises(ValidationError, match=r"apo.c_apo: must be a finite number >= 0; the paper uses 0.1 \(got -2"):
        APOArgs.model_validate({"reward_model": True, "apo": {"c_apo": -2}})
    assert APOArgs.model_validate({"reward_model": True, "apo": {}}).apo.c_apo == 0.1
