"""Rewards as OpenRLHF 0.11 itself computes them, for comparing ``ganpo-apo score --trained-by
openrlhf`` with: each (prompt, response) tokenized by OpenRLHF's own ``RewardDataset`` (the one
``train_rm`` trains on) and scored by the ``RewardModel`` its ``get_llm_for_sequence_regression``
builds, one unpadded sequence at a time, in fp32.

    python openrlhf_rewards.py RM ITEMS.jsonl OUT.json [--input-template T]

ITEMS rows: ``{"prompt": str | messages, "response": str}``; chat rows go through the chat
template (``--data.apply_chat_template``). OUT: ``{"input_ids": [[...]], "rewards": [...]}``.
Run it with ``cpu_shims`` on ``PYTHONPATH`` (OpenRLHF imports flash-attn).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import torch
from datasets import Dataset
from openrlhf.datasets import RewardDataset
from openrlhf.models import get_llm_for_sequence_regression
from openrlhf.utils import get_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rm")
    parser.add_argument("items", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--input-template", default=None)
    args = parser.parse_args()

    items = [json.loads(line) for line in args.items.read_text().splitlines()]
    chat = isinstance(items[0]["prompt"], list)
    # chosen = rejected = the response: only the chosen side is read back
    answer = (lambda r: [{"role": "assistant", "content": r}]) if chat else (lambda r: r)
    rows = [{"prompt": i["prompt"], "chosen": answer(i["response"]), "rejected": answer(i["response"])} for i in items]
    data = Dataset.from_list(rows)
    # train_rm's parsed flags, as far as RewardDataset reads them
    flags = SimpleNamespace(
        prompt_key="prompt", chosen_key="chosen", rejected_key="rejected", apply_chat_template=chat,
        tokenizer_chat_template=None,
    )  # fmt: skip
    # train_rm saves bf16 weights (its default), so loading in bf16 and upcasting is exact
    model = get_llm_for_sequence_regression(args.rm, "reward", param_dtype="bf16", attn_implementation="eager")
    model = model.float().eval()
    tokenizer = get_tokenizer(args.rm, model, "left")
    dataset = RewardDataset(
        data, tokenizer, 4096, SimpleNamespace(args=SimpleNamespace(data=flags)), args.input_template, num_processors=1
    )
    input_ids, rewards = [], []
    with torch.no_grad():
        for i in range(len(dataset)):
            ids, mask = dataset[i][:2]
            input_ids.append(ids[0].tolist())
            rewards.append(float(model(ids, attention_mask=mask)))
    args.out.write_text(json.dumps({"input_ids": input_ids, "rewards": rewards}))


if __name__ == "__main__":
    main()
