"""The dataset transform and reward of examples/axolotl/tiny_grpo_ganpo.yml (Axolotl imports both by
dotted name, so this folder goes on PYTHONPATH). Put your own verifiable reward in ``letter_e``'s place."""

from __future__ import annotations

from typing import Any


def prompts(cfg: Any, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """Axolotl's GRPO dataset type: each row's ``prompt`` as one user message; other columns dropped."""

    def transform(example: dict[str, Any], tokenizer: Any = None) -> dict[str, Any]:
        return {"prompt": [{"role": "user", "content": example["prompt"]}]}

    return transform, {"remove_columns": ["chosen", "rejected"]}


def letter_e(completions: list[Any], **kwargs: Any) -> list[float]:
    """A stand-in reward: how often the completion says ``e`` (Axolotl passes chat message lists)."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [float(text.count("e")) for text in texts]
