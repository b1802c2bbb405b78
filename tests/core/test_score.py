"""The scoring tool's model-free parts: correlations, loading a run's discriminators, scoring
hidden states at the run's positions (the command itself: tests/host_trl/test_score_cli.py)."""

from __future__ import annotations

import math

import pytest
import torch
from latents import H, make_batch

from ganpo_plugins import RegularizerContext, RegularizerRunner, StepInfo
from ganpo_plugins.formulas.discriminators import compact_positions
from ganpo_plugins.tools.score import (
    correlation_report,
    load_discriminators,
    pearson,
    score_hidden_states,
    selected_positions,
    spearman,
)

SMALL = {"discriminator": {"d_model": 16, "num_heads": 2, "ffn_size": 32, "num_layers": 1}}


def test_pearson_and_spearman_match_hand_computed_values() -> None:
    # x − x̄ = (−1, 0, 1), y − ȳ = (−1, 1, 0): r = 1 / √(2·2) = ½; the ranks are the values.
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    # y = x³: Σab = 104, Σa² = 5, Σb² = 2390 → r = 104 / √11950; monotone, so ρ = 1.
    assert pearson([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(104 / math.sqrt(11950))
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
    # ties share their mean rank: x ranks (1.5, 1.5, 3, 4) against (1, 2, 3, 4)
    assert spearman([5, 5, 7, 9], [1, 2, 3, 4]) == pytest.approx(pearson([1.5, 1.5, 3, 4], [1, 2, 3, 4]))
    assert pearson([1.5, 1.5, 3, 4], [1, 2, 3, 4]) == pytest.approx(
        4.5 / math.sqrt(4.5 * 5)
    )  # Σab = Σa² = 4.5, Σb² = 5
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_selected_positions_follow_the_mask_modes() -> None:
    attention = torch.tensor([[True, True, True, False]])
    response = torch.tensor([[False, True, True, True]])
    assert selected_positions("response", attention, response).tolist() == [[False, True, True, False]]
    assert selected_positions("sequence", attention, response).tolist() == [[True, True, True, False]]
    assert selected_positions("none", attention, response).tolist() == [[True, True, True, True]]


@pytest.fixture
def saved_run(tmp_path):
    """A trained-for-three-steps GANPO regularizer saved the way every adapter saves it."""
    runner = RegularizerRunner(SMALL, RegularizerContext(hidden_size=H, policy_lr=2e-3, total_steps=10))
    for step in range(3):
        runner.regularizer.update(make_batch(step), StepInfo())
    runner.save(tmp_path)
    return runner.regularizer, tmp_path


def test_loaded_discriminators_score_like_the_run(saved_run) -> None:
    regularizer, directory = saved_run
    saved = load_discriminators(directory, H)  # the directory or the file itself
    assert saved.config.mask == "response"
    batch = make_batch(5)
    mask = selected_positions("response", batch.attention_chosen, batch.response_chosen)
    mask[1] = False  # a row with nothing selected scores None
    scores = score_hidden_states(saved, batch.policy_chosen.detach(), mask)
    compact, compact_mask = compact_positions(batch.policy_chosen.detach(), mask, 2048)
    regularizer.discriminators.eval()
    with torch.no_grad():
        for column, side in (("d_pos", "pos"), ("d_neg", "neg")):
            expected = regularizer.discriminators[side](compact, compact_mask)
            assert scores[column][1] is None
            assert [scores[column][i] for i in (0, 2)] == pytest.approx([expected[0].item(), expected[2].item()])


def test_loading_refuses_other_regularizers_and_other_hidden_sizes(saved_run, tmp_path) -> None:
    _, directory = saved_run
    with pytest.raises(ValueError, match="hidden size 16"):
        load_discriminators(directory / "ganpo_regularizer.pt", 16)
    payload = torch.load(directory / "ganpo_regularizer.pt", weights_only=True)
    torch.save({**payload, "regularizer": "mmd"}, tmp_path / "mmd.pt")
    with pytest.raises(ValueError, match="'mmd'; scoring needs 'ganpo'"):
        load_discriminators(tmp_path / "mmd.pt", H)


def test_correlation_report_skips_rows_without_numbers() -> None:
    rows = [
        {"d_pos": 1.0, "d_neg": 3.0, "oracle": 1.0},
        {"d_pos": 3.0, "d_neg": 2.0, "oracle": 2.0},
        {"d_pos": 2.0, "d_neg": 1.0, "oracle": 3.0},
        {"d_pos": None, "d_neg": None, "oracle": 4.0},  # nothing selected
        {"d_pos": 9.0, "d_neg": 9.0, "oracle": None},  # no reference
    ]
    text, numbers = correlation_report(rows, "oracle")
    assert numbers["d_pos"] == {"n": 3, "pearson": pytest.approx(0.5), "spearman": pytest.approx(0.5)}
    assert numbers["d_neg"]["pearson"] == pytest.approx(-1.0)
    assert "d_pos vs oracle: pearson +0.5000  spearman +0.5000  (n=3)" in text
