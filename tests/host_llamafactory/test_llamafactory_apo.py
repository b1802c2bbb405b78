"""APO reward-model training in LLaMA-Factory (``stage: rm`` with an ``apo:`` block) through the real
CLI, tiny model, CPU, a real LLaMA-Factory ranking dataset of human and APO pairs."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("llamafactory.train.tuner", reason="needs LLaMA-Factory: tox -e llamafactory")

from llamafactory_dataset import write_ranking_dataset

from ganpo_plugins.apo import APOConfigError
from ganpo_plugins.apo.data import apo_pairs, golden_responses, human_pairs, read_jsonl, write_jsonl
from ganpo_plugins.config import GANPOConfigError

pytestmark = [pytest.mark.llamafactory, pytest.mark.slow]

EXAMPLE = "examples/llamafactory/tiny_rm_apo.yaml"
DATASET = "tiny_apo_pairs"  # the example's dataset name
APO = {"c_human": 1.0, "c_apo": 0.1, "samples_per_prompt": 2}
LOAD_MARKS = ("loading weights file",)


@pytest.fixture(scope="session")
def apo_data(tiny_assets: Path, lf_workdir: Path) -> tuple[Path, list[dict[str, Any]]]:
    """A ``dataset_dir`` naming 8 human pairs and 16 APO pairs (k = 2 samples of 8 prompts) as the
    ranking dataset ``tiny_apo_pairs``, and its rows."""
    prefs = read_jsonl(tiny_assets / "prefs.jsonl")[:8]
    samples = [{"prompt": r["prompt"], "samples": [r["rejected"], r["chosen"][:4]]} for r in prefs]
    rows = human_pairs(prefs, "prefs", chat=False) + apo_pairs(samples, golden_responses(prefs, "p", "chosen"), "s", 2)
    folder = lf_workdir / "apo_data"
    folder.mkdir(exist_ok=True)
    write_jsonl(folder / "pairs.jsonl", rows)
    return write_ranking_dataset(folder, DATASET, folder / "pairs.jsonl"), rows


@pytest.fixture(scope="session")
def reward_model(tiny_assets: Path, lf_workdir: Path) -> Path:
    """The tiny policy with a value head of known weights (LLaMA-Factory loads ``value_head.safetensors``
    from the model folder), so the initial rewards can be computed here."""
    from safetensors.torch import save_file

    folder = lf_workdir / "rm"
    if not folder.exists():
        shutil.copytree(tiny_assets / "model", folder)
        hidden = json.loads((folder / "config.json").read_text())["hidden_size"]
        generator = torch.Generator().manual_seed(0)
        head = {
            "v_head.summary.weight": torch.randn(1, hidden, generator=generator),
            "v_head.summary.bias": torch.tensor([0.1]),
        }
        save_file(head, str(folder / "value_head.safetensors"))
    return folder


def _apo_cfg(
    name: str, example_config: Callable[..., dict[str, Any]], lf_workdir: Path, data: Path, rm: Path, **extra: Any
) -> dict[str, Any]:
    cfg = example_config(EXAMPLE, {"apo": APO}, extra)
    cfg.update(model_name_or_path=str(rm), dataset_dir=str(data), output_dir=str(lf_workdir / name / "out"))
    return cfg


@pytest.fixture(scope="session")
def apo_run(
    apo_data: tuple[Path, list[dict[str, Any]]],
    reward_model: Path,
    lf_workdir: Path,
    example_config: Callable[..., dict[str, Any]],
    lf_train: Callable[..., Any],
) -> Any:
    """Two steps over all 24 pairs, evaluated on them before training (the initial model, dropout
    off) and after each step; the tokenized pairs saved (``tokenized_path``)."""
    n = len(apo_data[1])
    cfg = _apo_cfg(
        "apo", example_config, lf_workdir, apo_data[0], reward_model,
        per_device_train_batch_size=n, per_device_eval_batch_size=n, max_steps=2, save_steps=1,
        eval_dataset=DATASET, eval_strategy="steps", eval_steps=1, eval_on_start=True,
        disable_shuffling=True, tokenized_path=str(lf_workdir / "apo" / "tokenized"),
    )  # fmt: skip
    return lf_train("apo", cfg)


def test_every_pair_keeps_its_flag_through_llamafactorys_data_pipeline(
    apo_run: Any, apo_data: tuple[Path, list[dict[str, Any]]], lf_workdir: Path
) -> None:
    from datasets import load_from_disk

    apo_run.assert_ok()
    rows = apo_data[1]
    tokenized = load_from_disk(str(lf_workdir / "apo" / "tokenized"))["train"]
    assert tokenized["is_apo"] == [r["is_apo"] for r in rows]  # file order: no pair dropped
    assert sum(tokenized["is_apo"]) == 16
    assert "apo: APO reward-model loss ON in PairwiseTrainer: L = 1.0 · BT(human) + (0.1 / 2) · BT(APO); " in (
        apo_run.log
    )
    assert "16 of 24 training pairs are APO pairs" in apo_run.log


def test_the_loss_is_apos_on_the_rewards_llamafactory_reads(apo_run: Any, reward_model: Path, lf_workdir: Path) -> None:
    """The evaluation before training (eval mode: the value head's dropout is off) logs
    ``Σ_i w_i · (−log σ(r_chosen − r_rejected)) / N`` with ``w = c_human`` for human pairs and
    ``c_apo / k`` for APO pairs (arXiv 2311.08045; docs/apo.md), ``r`` the value head at each
    sequence's last token, computed here from the saved tokens with transformers alone."""
    from datasets import load_from_disk
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    apo_run.assert_ok()
    head = load_file(str(reward_model / "value_head.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(reward_model).eval()

    def reward(ids: list[int]) -> float:
        with torch.no_grad():
            hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
        return float(hidden @ head["v_head.summary.weight"][0] + head["v_head.summary.bias"][0])

    terms, hits = [], {True: 0, False: 0}
    for ex in load_from_disk(str(lf_workdir / "apo" / "tokenized"))["train"]:
        margin = reward(ex["chosen_input_ids"]) - reward(ex["rejected_input_ids"])
        weight = APO["c_apo"] / APO["samples_per_prompt"] if ex["is_apo"] else APO["c_human"]
        terms.append(weight * math.log1p(math.exp(-margin)))
        hits[ex["is_apo"]] += margin > 0
    state = json.loads((apo_run.out / "trainer_state.json").read_text())
    first_eval = next(entry for entry in state["log_history"] if "eval_loss" in entry)
    assert first_eval["step"] == 0
    assert first_eval["eval_loss"] == pytest.approx(sum(terms) / len(terms), rel=1e-4)
    assert first_eval["eval_apo/accuracy_apo"] == hits[True] / 16
    assert first_eval["eval_apo/accuracy_human"] == hits[False] / 8
    assert first_eval["eval_apo/fraction"] == pytest.approx(16 / 24)


def test_apo_metrics_reach_trainer_state_and_llamafactorys_trainer_log(apo_run: Any) -> None:
    apo_run.assert_ok()
    history = apo_run.history()
    assert [entry["step"] for entry in history] == [1, 2]
    for entry in history:
        assert entry["apo/fraction"] == pytest.approx(16 / 24)
        assert {"apo/accuracy_apo", "apo/accuracy_human"} <= entry.keys()
    logged = [entry for entry in apo_run.trainer_log() if "loss" in entry]
    assert [entry["apo/fraction"] for entry in logged] == [entry["apo/fraction"] for entry in history]
    assert [entry["loss"] for entry in logged] == [entry["loss"] for entry in history]


def test_training_with_the_apo_loss_changes_the_value_head(apo_run: Any, reward_model: Path) -> None:
    from safetensors.torch import load_file

    apo_run.assert_ok()
    before = load_file(str(reward_model / "value_head.safetensors"))
    after = load_file(str(apo_run.out / "value_head.safetensors"))
    assert not torch.equal(before["v_head.summary.weight"], after["v_head.summary.weight"])


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "error", "fragment"),
    [
        ({"stage": "dpo"}, APOConfigError, "stage: dpo: the apo block trains a reward model with the APO loss"),
        ({"apo": {"c_apo": -1}}, APOConfigError, "apo.c_apo: must be a finite number >= 0; the paper uses 0.1"),
        ({"apo": {"k": 4}}, APOConfigError, "apo.k"),
        ({"ganpo": {"weight": 1.0}}, GANPOConfigError, "ganpo and apo blocks in one config"),
    ],
    ids=["stage-dpo", "negative-c_apo", "unknown-key", "both-blocks"],
)
def test_a_bad_apo_block_is_refused_before_anything_loads(
    overrides: dict[str, Any],
    error: type[Exception],
    fragment: str,
    apo_data: tuple[Path, list[dict[str, Any]]],
    reward_model: Path,
    lf_workdir: Path,
    example_config: Callable[..., dict[str, Any]],
) -> None:
    from ganpo_llamafactory import run_exp

    cfg = _apo_cfg("apo-refused", example_config, lf_workdir, apo_data[0], reward_model)
    cfg = example_config(EXAMPLE, cfg, overrides)
    with pytest.raises(error) as refused:
        run_exp(cfg)
    assert fragment in str(refused.value)
    assert not Path(cfg["output_dir"]).exists()


def test_a_flag_that_is_not_a_boolean_stops_the_run_while_the_data_is_read(
    apo_data: tuple[Path, list[dict[str, Any]]],
    reward_model: Path,
    lf_workdir: Path,
    example_config: Callable[..., dict[str, Any]],
    lf_train: Callable[..., Any],
) -> None:
    folder = lf_workdir / "apo_bad_data"
    folder.mkdir()
    rows = [{**r, "is_apo": str(r["is_apo"]).lower()} for r in apo_data[1]]  # "true" and "false": strings
    write_jsonl(folder / "pairs.jsonl", rows)
    write_ranking_dataset(folder, DATASET, folder / "pairs.jsonl")
    run = lf_train("apo-bad-flag", _apo_cfg("apo-bad-flag", example_config, lf_workdir, folder, reward_model))
    assert run.returncode == 2, run.log[-3000:]
    assert (
        f"ganpo-llamafactory-cli: error: dataset {folder / 'pairs.jsonl'}: 'is_apo' must be true or false "
        "(APO pair or human pair), got 'false'"
    ) in run.log
    assert not any(mark in run.log for mark in LOAD_MARKS), run.log[-3000:]
