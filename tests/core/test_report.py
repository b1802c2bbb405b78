"""The closing summary every host run prints after its last log line (ganpo_plugins.report)."""

from __future__ import annotations

import dataclasses
import warnings

import torch
from test_taps_runner import CTX, SMALL, TinyLM, _batch

from ganpo_plugins import StepInfo
from ganpo_plugins.adapter_kit.announce import RunRecord, closing_summary
from ganpo_plugins.adapter_kit.runner import RegularizerRunner

ON = "ganpo: ganpo regularizer ON (weight λ=1.0) in DPOTrainer (trl 1.9.0); ..."


def test_summary_repeats_the_on_line_and_reports_accuracies_streaks_and_skips() -> None:
    record = RunRecord(
        micro_steps=32,
        skips={"skipped": 2, "term_skipped": 1},
        last_logged={
            "ganpo/adv_loss": 0.69,
            "ganpo/d_pos/accuracy": 0.5,
            "ganpo/d_pos/saturated_steps": 8.0,
            "ganpo/d_neg/accuracy": 0.625,
            "ganpo/d_neg/saturated_steps": 0.0,
        },
        last_logged_step=8,
    )
    on_line, summary = closing_summary(ON, record).split("\n")
    assert on_line == ON
    assert summary == (
        "ganpo: run summary at the last log (step 8): D+ accuracy 0.500 (saturated for the last 8 steps), "
        "D− accuracy 0.625 (not saturated); skipped in 32 training micro-steps of this process: "
        "2 discriminator updates, 1 policy terms (healthy ranges, saturation: docs/metrics.md)"
    )


def test_summary_of_a_regularizer_without_discriminators_and_of_a_run_that_logged_nothing() -> None:
    mmd = RunRecord(
        micro_steps=4, last_logged={"ganpo/mmd_chosen": 0.125, "ganpo/term_skipped": 0.0}, last_logged_step=2
    )
    assert "at the last log (step 2): mmd_chosen 0.125; skipped in 4" in closing_summary(ON, mmd)
    assert "no training metrics were logged; skipped in 0" in closing_summary(ON, RunRecord())


def test_runner_records_training_micro_steps_skips_and_the_last_logged_metrics() -> None:
    runner = RegularizerRunner(SMALL, CTX, TinyLM(0))
    runner.step(_batch(0), StepInfo())
    broken = _batch(1)
    broken = dataclasses.replace(broken, policy_chosen=torch.full_like(broken.policy_chosen, float("nan")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the skip warns once; counted here
        runner.step(broken, StepInfo())
    runner.step(_batch(2), StepInfo())
    with torch.no_grad():
        runner.step(_batch(3), None)  # evaluation: not a training micro-step
    logged = runner.pop_metrics("train", step=3)
    runner.pop_metrics("eval")  # evaluation metrics never replace the last training log
    record = runner.record
    assert record.micro_steps == 3 and record.skips == {"skipped": 1, "term_skipped": 1}
    assert record.last_logged == logged and record.last_logged_step == 3
    assert f"D+ accuracy {logged['ganpo/d_pos/accuracy']:.3f}" in closing_summary(ON, record)
    runner.pop_metrics("train", step=4)  # nothing new since: the last log stays the one with metrics
    assert runner.record.last_logged == logged
    runner.close()
