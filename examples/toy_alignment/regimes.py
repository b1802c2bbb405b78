"""The training regimes of the "when does GANPO help?" study: what each does to the oracle-labelled pairs.

Every regime starts from the same oracle pairs (``toy_pipeline.label_pairs``: of 4 samples of the SFT
model, the oracle's best is chosen and its worst rejected) and changes one thing:

- ``clean``: the pairs as labelled, 3 epochs (the offline study's setting).
- ``noisy20`` / ``noisy40``: exactly ``round(share · n)`` pairs, picked at random (fixed RNG, the same
  pairs for every seed), have chosen and rejected swapped.
- ``little``: 64 pairs (a fixed random subset) trained for 10 epochs.
- ``length``: a labeller biased toward length that the oracle does not share: of each pair, the longer
  response is labelled chosen (the oracle's order where both are equally long).

Pure functions of the pair list; ``tests/toy/test_study_regimes.py`` checks them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from toy_task import oracle_reward

Pair = dict[str, str]


@dataclass(frozen=True)
class Regime:
    """One regime: its name, a line for the tables, and how it changes the pairs and the epochs."""

    name: str
    description: str
    flip_share: float = 0.0
    n_pairs: int | None = None  # None: all pairs
    epochs: int | None = None  # None: the study's default (3)
    length_bias: bool = False


REGIMES = (
    Regime("clean", "oracle labels, all pairs, 3 epochs"),
    Regime("noisy20", "20 % of the pairs flipped", flip_share=0.2),
    Regime("noisy40", "40 % of the pairs flipped", flip_share=0.4),
    Regime("little", "64 pairs, 10 epochs", n_pairs=64, epochs=10),
    Regime("length", "the longer response labelled chosen (oracle order on equal length)", length_bias=True),
)
BY_NAME = {r.name: r for r in REGIMES}
REGIME_RNG_SEED = 40_000  # the flipped pairs and the subset are the same for every training seed


def swapped(pair: Pair) -> Pair:
    return {**pair, "chosen": pair["rejected"], "rejected": pair["chosen"]}


def flip_labels(pairs: list[Pair], share: float, seed: int) -> list[Pair]:
    """The pairs with exactly ``round(share · len(pairs))`` of them, drawn without replacement by
    ``random.Random(seed)``, swapped; order and every other pair unchanged."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"flip share must lie in [0, 1], got {share}")
    flipped = set(random.Random(seed).sample(range(len(pairs)), round(share * len(pairs))))
    return [swapped(p) if i in flipped else p for i, p in enumerate(pairs)]


def subset(pairs: list[Pair], n: int, seed: int) -> list[Pair]:
    """``n`` pairs drawn without replacement by ``random.Random(seed)``, in their original order."""
    if not 0 < n <= len(pairs):
        raise ValueError(f"subset size must lie in [1, {len(pairs)}], got {n}")
    keep = set(random.Random(seed).sample(range(len(pairs)), n))
    return [p for i, p in enumerate(pairs) if i in keep]


def prefer_longer(pairs: list[Pair]) -> list[Pair]:
    """Relabel each pair so that the longer response is chosen; equal lengths keep their order."""
    return [swapped(p) if len(p["rejected"]) > len(p["chosen"]) else p for p in pairs]


def apply(regime: Regime, pairs: list[Pair], seed: int = REGIME_RNG_SEED) -> list[Pair]:
    """The training pairs of ``regime``, made from the oracle-labelled ``pairs``."""
    out = pairs
    if regime.n_pairs is not None:
        out = subset(out, regime.n_pairs, seed)
    if regime.flip_share:
        out = flip_labels(out, regime.flip_share, seed)
    if regime.length_bias:
        out = prefer_longer(out)
    return out


def label_stats(pairs: list[Pair]) -> dict[str, float]:
    """How a pair list's labels relate to the oracle and to length: the share of pairs whose chosen
    response the oracle scores lower than the rejected one (``against_oracle``), the share whose
    chosen response is longer (``chosen_longer``) and shorter (``chosen_shorter``), and the count."""
    n = len(pairs)
    against = sum(oracle_reward(p["prompt"], p["chosen"]) < oracle_reward(p["prompt"], p["rejected"]) for p in pairs)
    longer = sum(len(p["chosen"]) > len(p["rejected"]) for p in pairs)
    shorter = sum(len(p["chosen"]) < len(p["rejected"]) for p in pairs)
    return {"pairs": n, "against_oracle": against / n, "chosen_longer": longer / n, "chosen_shorter": shorter / n}
