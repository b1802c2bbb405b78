"""The regime study's statistics (examples/toy_alignment/study_stats.py and the cells of
study_report.py) against hand-derived values."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "toy_alignment"))

import study_stats


@pytest.mark.parametrize(
    ("df", "expected"),
    # two-sided 95 % critical values of Student's t (any printed table)
    [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423), (1000, 1.9623)],
)
def test_t_quantile_matches_the_printed_table(df: int, expected: float) -> None:
    assert study_stats.student_t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_t_cdf_is_symmetric_and_centred() -> None:
    assert study_stats.student_t_cdf(0.0, 3) == 0.5
    assert study_stats.student_t_cdf(-1.5, 3) == pytest.approx(1 - study_stats.student_t_cdf(1.5, 3), abs=1e-12)
    # df = 1 is the Cauchy distribution: P(T ≤ 1) = 1/2 + atan(1)/π = 3/4
    assert study_stats.student_t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-9)


def test_t_quantile_refuses_a_lower_tail() -> None:
    with pytest.raises(ValueError, match="p must lie in"):
        study_stats.student_t_quantile(0.3, 4)


def test_paired_differences_pair_by_seed_and_drop_unpaired_seeds() -> None:
    plain = {0: 0.4, 1: 0.5, 2: 0.6, 3: 0.9}
    treated = {2: 0.6, 0: 0.5, 1: 0.7, 5: 0.1}
    assert study_stats.paired_differences(plain, treated) == pytest.approx([0.1, 0.2, 0.0])


def test_t_interval_hand_values() -> None:
    # [0.1, 0.2, 0.0]: mean 0.1, s = 0.1, half width t(0.975, 2) · 0.1 / √3 = 4.302653 · 0.057735 = 0.248414
    ci = study_stats.t_interval([0.1, 0.2, 0.0])
    assert (ci.mean, ci.low, ci.high, ci.n) == pytest.approx((0.1, -0.148414, 0.348414, 3), abs=1e-6)
    assert not ci.excludes_zero
    # [1..5]: mean 3, s = √2.5, half width 2.776445 · √2.5 / √5 = 1.963243
    ci = study_stats.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (ci.low, ci.high) == pytest.approx((1.036757, 4.963243), abs=1e-6)
    assert ci.excludes_zero
    # a 90 % interval is narrower: t(0.95, 4) = 2.131847
    assert study_stats.t_interval([1.0, 2.0, 3.0, 4.0, 5.0], 0.90).high == pytest.approx(3 + 2.131847 / math.sqrt(2))


def test_t_interval_of_one_or_no_value_has_no_bounds() -> None:
    one = study_stats.t_interval([0.3])
    assert one.mean == 0.3 and math.isnan(one.low) and math.isnan(one.high)
    assert math.isnan(study_stats.t_interval([]).mean)


def test_report_cell_pairs_each_seed_with_its_own_plain_run() -> None:
    pytest.importorskip("torch")
    import study_report

    def run(weight: float, seed: int, reward: float) -> dict:
        row = {"regime": "x", "method": "dpo", "weight": weight, "seed": seed}
        row |= {k: 0.0 for k in study_report.DELTA_KEYS} | {"reward@1.0": reward}
        return row | ({"d_pos_acc": 0.6, "d_neg_acc": 0.5} if weight else {})

    # Plain rewards vary a lot across seeds; GANPO is plain + 0.1, 0.2, 0.0: the paired interval is
    # the hand value above, not the (much wider) unpaired one.
    runs = [run(0.0, 0, 0.2), run(0.0, 1, 0.9), run(0.0, 2, 0.5)]
    runs += [run(1.0, 0, 0.3), run(1.0, 1, 1.1), run(1.0, 2, 0.5), run(1.0, 0, 0.0) | {"regime": "y"}]
    cell = study_report.cell(runs, "x", "dpo", 1.0)
    assert cell["seeds"] == [0, 1, 2]
    delta = cell["delta"]["reward@1.0"]
    assert (delta["mean"], delta["low"], delta["high"]) == pytest.approx((0.1, -0.148414, 0.348414), abs=1e-6)
    assert cell["disc"]["d_pos_acc"]["mean"] == pytest.approx(0.6)
    assert "delta" not in study_report.cell(runs, "x", "dpo", 0.0)
