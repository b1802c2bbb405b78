"""The toy task's oracle and data (examples/toy_alignment/toy_task.py), against hand-derived values."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "toy_alignment"))

import toy_task


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("abc", 1.0),  # the sorted letters
        ("ab", 1 - 1 / 3),  # one letter missing: distance 1, longest 3
        ("abcd", 1 - 1 / 4),  # one letter too many: distance 1, longest 4
        ("acb", 1 - 2 / 3),  # neighbours swapped: two substitutions
        ("", 0.0),  # nothing: distance 3, longest 3
        ("xyzxyz", 0.0),  # nothing right, twice as long
        ("ab<s>", 1 - 1 / 3),  # a stray special token counts as one wrong character
    ],
)
def test_oracle_reward_is_edit_similarity_to_sorted_letters(response: str, expected: float) -> None:
    assert toy_task.oracle_reward("<s>cba=", response) == pytest.approx(expected)


def test_levenshtein_hand_values() -> None:
    assert toy_task.levenshtein("kitten", "sitting") == 3
    assert toy_task.levenshtein("", "abc") == 3
    assert toy_task.levenshtein("abc", "abc") == 0


def test_noisy_demonstrations_are_noisy_at_the_configured_rate() -> None:
    rng = random.Random(0)
    prompts = [toy_task.make_prompt(rng) for _ in range(2000)]
    clean = [toy_task.demonstration(p, 0.0, rng) for p in prompts]
    assert all(d == toy_task.target(p) for p, d in zip(prompts, clean, strict=True))
    noisy = [toy_task.demonstration(p, 0.6, rng) for p in prompts]
    wrong = sum(d != toy_task.target(p) for p, d in zip(prompts, noisy, strict=True)) / len(prompts)
    # An edit can leave the text unchanged (e.g. swapping equal letters), so slightly under 0.6.
    assert 0.45 < wrong <= 0.62


def test_tokenizer_is_one_token_per_character_and_round_trips() -> None:
    pytest.importorskip("transformers")
    tok = toy_task.build_tokenizer()
    text = "<s>hgfa=afgh</s>"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert len(ids) == len("hgfa=afgh") + 2  # no extra specials added
    assert tok.decode(ids) == text
