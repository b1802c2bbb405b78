"""Fixtures of the in-process TRL tests: the tiny tokenizer, 16 preference pairs, a model loader.
Imports of TRL's stack happen inside the fixtures, so collecting this folder without TRL is fine
(each module skips itself)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def tokenizer(tiny_assets: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_assets / "model")


@pytest.fixture(scope="module")
def pairs(tiny_assets: Path) -> Any:
    from datasets import load_dataset

    return load_dataset("json", data_files=str(tiny_assets / "prefs.jsonl"), split="train").select(range(16))


@pytest.fixture
def load_model(tiny_assets: Path) -> Callable[[], Any]:
    from transformers import AutoModelForCausalLM

    return lambda: AutoModelForCausalLM.from_pretrained(tiny_assets / "model")
