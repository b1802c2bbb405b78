"""APO loss in TRL 1.9's real RewardTrainer on a tiny random Llama reward model (CPU).

Every run takes full-batch SGD steps from the same seed, so two runs whose losses are equal as
functions of the parameters end with equal parameters (float noise aside: plain SGD, unlike
Adam, does not blow up near-zero gradient noise), and runs whose losses differ do not.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# "trl.trainer", not "trl": from tests/, the folder tests/host_trl would pass for a namespace package named trl
pytest.importorskip("trl.trainer", reason="needs TRL: tox -e trl-oldest / axolotl-oldest")

import torch
from datasets import Dataset
from ganpo_trl.reward import APODataCollator, APORewardConfig, APORewardTrainer
from trl import RewardConfig, RewardTrainer

from ganpo_plugins.apo.data import apo_pairs, golden_responses, human_pairs, read_jsonl
from ganpo_plugins.apo.settings import APOConfigError

N_HUMAN, K = 8, 2


@pytest.fixture(scope="module")
def pairs(tiny_assets: Path) -> dict[str, list[dict]]:
    """8 human pairs and 16 APO pairs (golden = chosen; samples = the rejected answer and a
    truncation of the golden one), chat format as `ganpo-apo pairs` writes them."""
    prefs = read_jsonl(tiny_assets / "prefs.jsonl")[:N_HUMAN]
    samples = [
        {"prompt": [{"role": "user", "content": r["prompt"]}], "samples": [r["rejected"], r["chosen"].split()[0]]}
        for r in prefs
    ]
    apo = apo_pairs(samples, golden_responses(prefs, "prefs", "chosen"), "samples", K)
    return {"human": human_pairs(prefs, "prefs", chat=True), "apo": apo}


def train(model: str, rows: list[dict], out: Path, apo: dict | None = None) -> dict[str, torch.Tensor]:
    """Three full-batch SGD steps; returns the trained parameters. ``apo=None``: TRL's plain RewardTrainer."""
    common = dict(
        output_dir=str(out), per_device_train_batch_size=len(rows), max_steps=3, learning_rate=0.5, optim="sgd",
        bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no", seed=0,
        disable_tqdm=True, dataloader_pin_memory=False,
    )  # fmt: skip
    dataset = Dataset.from_list(rows)
    if apo is None:
        trainer = RewardTrainer(
            model=model, args=RewardConfig(**common), train_dataset=dataset.remove_columns("is_apo")
        )
    else:
        trainer = APORewardTrainer(model=model, args=APORewardConfig(**common, **apo), train_dataset=dataset)
    trainer.train()
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_apo_term_changes_the_reward_model_and_zero_weight_matches_plain_trl(
    tiny_assets: Path, pairs: dict[str, list[dict]], tmp_path: Path
) -> None:
    model = str(tiny_assets / "model")  # TRL adds a seeded random one-output score head
    mixed = pairs["human"] + pairs["apo"]
    with_apo = train(model, mixed, tmp_path / "a", {"apo_c_apo": 0.1, "apo_samples_per_prompt": K})
    # c_apo = 0 on the same data; c_human = N / N_human makes the loss the mean BT over the human
    # pairs, which is what plain TRL minimises when given the human pairs alone
    no_apo = train(
        model,
        mixed,
        tmp_path / "b",
        {"apo_c_human": len(mixed) / N_HUMAN, "apo_c_apo": 0.0, "apo_samples_per_prompt": K},
    )
    plain_human = train(model, pairs["human"], tmp_path / "c")
    assert max_diff(with_apo, no_apo) > 1e-4
    assert max_diff(no_apo, plain_human) < 1e-5


def test_weights_of_one_make_plain_trl_on_the_mixed_data(
    tiny_assets: Path, pairs: dict[str, list[dict]], tmp_path: Path
) -> None:
    """c_human = 1 and c_apo = k give every pair weight 1: the APO loss is TRL's own mean BT."""
    model = str(tiny_assets / "model")
    mixed = pairs["human"] + pairs["apo"]
    ones = train(model, mixed, tmp_path / "a", {"apo_c_human": 1.0, "apo_c_apo": float(K), "apo_samples_per_prompt": K})
    plain = train(model, mixed, tmp_path / "b")
    assert max_diff(ones, plain) < 1e-5


def test_collator_carries_is_apo_beside_trls_batch() -> None:
    from trl.trainer.reward_trainer import DataCollatorForPreference

    collator = APODataCollator(DataCollatorForPreference(pad_token_id=0))
    batch = collator(
        [{"chosen_ids": [1, 2], "rejected_ids": [3], "is_apo": True}, {"chosen_ids": [4], "rejected_ids": [5, 6]}]
    )
    assert batch["is_apo"].tolist() == [True, False]
    assert batch["input_ids"].tolist() == [[1, 2], [4, 0], [3, 0], [5, 6]]


def test_bad_settings_and_bad_flags_fail_before_the_model_loads(tiny_assets: Path, tmp_path: Path) -> None:
    with pytest.raises(APOConfigError, match=r"apo_c_apo: must be a finite number >= 0; the paper uses 0.1 \(got -1"):
        APORewardConfig(output_dir=str(tmp_path), apo_c_apo=-1.0)
    bad = Dataset.from_list([{"prompt": "a", "chosen": "x", "rejected": "y", "is_apo": 1}])
    args = APORewardConfig(output_dir=str(tmp_path), report_to="none", bf16=False)
    with pytest.raises(ValueError, match=r"train_dataset: column 'is_apo' must hold booleans"):
        APORewardTrainer(model=str(tmp_path / "never-loaded"), args=args, train_dataset=bad)
    with pytest.raises(TypeError, match="needs args=APORewardConfig"):
        APORewardTrainer(model=str(tmp_path / "never-loaded"), args=RewardConfig(output_dir=str(tmp_path), bf16=False))


def test_eval_loss_is_apo_rm_loss_of_the_rewards_at_the_scored_tokens(
    tiny_assets: Path, pairs: dict[str, list[dict]], tmp_path: Path
) -> None:
    """TRL's evaluation runs the APO loss too, on rewards read from exactly the tokens
    `ganpo-apo score` builds (`reward_input_ids`)."""
    from transformers import AutoTokenizer

    from ganpo_plugins.apo.hf import reward_input_ids
    from ganpo_plugins.formulas.functional import apo_rm_loss

    rows = pairs["human"][:3] + pairs["apo"][:5]
    args = APORewardConfig(
        output_dir=str(tmp_path), per_device_eval_batch_size=len(rows), report_to="none", bf16=False,
        apo_c_human=1.0, apo_c_apo=0.3, apo_samples_per_prompt=K, dataloader_pin_memory=False, disable_tqdm=True,
    )  # fmt: skip
    trainer = APORewardTrainer(model=str(tiny_assets / "model"), args=args, train_dataset=Dataset.from_list(rows),
                               eval_dataset=Dataset.from_list(rows))  # fmt: skip
    metrics = trainer.evaluate()

    tokenizer = AutoTokenizer.from_pretrained(tiny_assets / "model")
    model = trainer.model.eval()

    def reward(row: dict, field: str) -> float:
        ids = torch.tensor([reward_input_ids(tokenizer, row["prompt"], row[field][0]["content"])])
        with torch.no_grad():
            return model(input_ids=ids).logits[0, 0].item()

    chosen = torch.tensor([reward(r, "chosen") for r in rows], dtype=torch.float64)
    rejected = torch.tensor([reward(r, "rejected") for r in rows], dtype=torch.float64)
    is_apo = torch.tensor([r["is_apo"] for r in rows])
    expected = apo_rm_loss(chosen, rejected, is_apo, c_human=1.0, c_apo=0.3, samples_per_prompt=K).item()
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-4)
    assert metrics["eval_apo/fraction"] == pytest.approx(5 / 8)
