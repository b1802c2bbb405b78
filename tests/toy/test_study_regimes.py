"""The regime study's training pairs (examples/toy_alignment/regimes.py) do what each regime says."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "toy_alignment"))

import regimes
import toy_task


def oracle_pairs(n: int) -> list[dict[str, str]]:
    """Pairs labelled as the oracle would: the sorted letters chosen, a corrupted copy rejected
    (corrupted until the oracle scores it strictly lower)."""
    rng = random.Random(1)
    pairs = []
    for _ in range(n):
        prompt = toy_task.make_prompt(rng)
        good = toy_task.target(prompt)
        bad = toy_task.corrupt(good, rng)
        while toy_task.oracle_reward(prompt, bad) >= 1.0:
            bad = toy_task.corrupt(bad, rng)
        pairs.append({"prompt": prompt, "chosen": good, "rejected": bad})
    return pairs


@pytest.mark.parametrize(("name", "flipped"), [("noisy20", 40), ("noisy40", 80)])
def test_noisy_regimes_flip_exactly_their_share(name: str, flipped: int) -> None:
    pairs = oracle_pairs(200)
    noisy = regimes.apply(regimes.BY_NAME[name], pairs)
    changed = [i for i, (a, b) in enumerate(zip(pairs, noisy, strict=True)) if a != b]
    assert len(changed) == flipped
    for i in changed:  # a flip swaps the two responses and keeps the prompt
        assert noisy[i] == regimes.swapped(pairs[i])
        assert (noisy[i]["chosen"], noisy[i]["rejected"]) == (pairs[i]["rejected"], pairs[i]["chosen"])
    assert regimes.label_stats(noisy)["against_oracle"] == pytest.approx(flipped / 200)
    assert regimes.apply(regimes.BY_NAME[name], pairs) == noisy  # the same pairs for every training seed


def test_clean_regime_keeps_the_oracle_labels() -> None:
    pairs = oracle_pairs(50)
    assert regimes.apply(regimes.BY_NAME["clean"], pairs) == pairs
    assert regimes.label_stats(pairs)["against_oracle"] == 0.0


def test_little_regime_keeps_64_pairs_in_order_and_trains_10_epochs() -> None:
    pairs = oracle_pairs(300)
    little = regimes.apply(regimes.BY_NAME["little"], pairs)
    assert len(little) == 64 and len({p["prompt"] + p["chosen"] for p in little}) == 64
    positions = [pairs.index(p) for p in little]
    assert positions == sorted(positions)
    assert regimes.BY_NAME["little"].epochs == 10
    with pytest.raises(ValueError, match="subset size"):
        regimes.subset(pairs[:10], 64, 0)


def test_length_regime_labels_the_longer_response_chosen() -> None:
    pairs = [
        {"prompt": "<s>cba=", "chosen": "abc", "rejected": "ab"},  # oracle and length agree
        {"prompt": "<s>cba=", "chosen": "abc", "rejected": "abcc"},  # length prefers the worse one
        {"prompt": "<s>cba=", "chosen": "abc", "rejected": "acb"},  # equal length: oracle order kept
    ]
    biased = regimes.apply(regimes.BY_NAME["length"], pairs)
    assert biased == [pairs[0], regimes.swapped(pairs[1]), pairs[2]]
    # hand values: 1 of 3 chosen scored lower by the oracle (abcc 0.75 over abc 1.0); 2 of 3 chosen longer
    assert regimes.label_stats(biased) == pytest.approx(
        {"pairs": 3, "against_oracle": 1 / 3, "chosen_longer": 2 / 3, "chosen_shorter": 0.0}
    )


def test_flip_share_outside_the_unit_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="flip share"):
        regimes.flip_labels(oracle_pairs(5), 1.5, 0)
