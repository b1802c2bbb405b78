"""The LLaMA-Factory adapter through its real CLI (``ganpo-llamafactory-cli train cfg.yaml``, which
runs LLaMA-Factory's own launcher and ``run_exp``), tiny model, CPU, a real LLaMA-Factory dataset.

Each run trains one preference pair per step, so the numbers LLaMA-Factory logs per step describe
that pair: the loss must equal ``f(βρ) + λ·L_adv`` with ``βρ`` the logged reward margin and
``L_adv`` the logged ``ganpo/adv_loss`` — the base loss computed by hand here, never by the code
under test.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("llamafactory.train.tuner", reason="needs LLaMA-Factory: tox -e llamafactory")

from bad_input_table import table
from safetensors.torch import load_file
from state_equality import assert_states_equal

from ganpo_plugins.config import GANPOConfigError

pytestmark = [pytest.mark.llamafactory, pytest.mark.slow]

BETA, GAMMA = 0.1, 0.5  # pref_beta of the example config, LLaMA-Factory's default simpo_gamma
F: dict[str, Callable[[float], float]] = {  # the base loss at the logged margin m = βρ
    "sigmoid": lambda m: math.log1p(math.exp(-m)),  # docs/methods.md, GPO logistic
    "hinge": lambda m: max(0.0, 1 - m),
    "savage": lambda m: 1 / (1 + math.exp(m)) ** 2,
    "squared": lambda m: (m - 1) ** 2,
    "simpo": lambda m: math.log1p(math.exp(GAMMA - m)),  # −log σ(β(r̄_w − r̄_l) − γ), rewards β·r̄
}
# What LLaMA-Factory and transformers log when a dataset or a model starts loading: absent from a
# run refused before either loads.
LOAD_MARKS = ("Loading dataset", "loading weights file")
COMBINATIONS = [(json.loads(overrides), fragments) for overrides, fragments in table("LLaMA-Factory combinations")]


def _assert_trained(run: Any, steps: int) -> None:
    run.assert_trained(steps)
    assert "ganpo: ganpo regularizer ON" in run.log


def _assert_loss_is(history: list[dict[str, Any]], base: Callable[[dict[str, Any]], float]) -> None:
    for entry in history:
        expected = base(entry) + entry["ganpo/adv_loss"]
        assert entry["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6), entry


def _assert_refused_before_loading(run: Any, *fragments: str) -> None:
    assert run.returncode == 2, run.log[-3000:]
    assert "ganpo-llamafactory-cli: error:" in run.log
    for fragment in fragments:
        assert fragment in run.log, run.log[-3000:]
    assert not any(mark in run.log for mark in LOAD_MARKS), run.log[-3000:]
    assert not run.out.exists()


@pytest.fixture(scope="session")
def dpo(lf_cfg: Callable[..., Any], lf_train: Callable[..., Any]) -> Any:
    return lf_train("dpo", lf_cfg("dpo"))


@pytest.fixture(scope="session")
def plain(lf_cfg: Callable[..., Any], lf_train: Callable[..., Any]) -> Any:
    return lf_train("plain", lf_cfg("plain", ganpo=False), plain=True)


# -- bad input ---------------------------------------------------------------------------------


def test_bad_ganpo_value_stops_the_cli_before_anything_loads(
    lf_cfg: Callable[..., Any], lf_train: Callable[..., Any]
) -> None:
    run = lf_train("bad", lf_cfg("bad", {"ganpo": {"weight": -1, "discriminator": {"d_modle": 8}}}))
    _assert_refused_before_loading(
        run,
        "ganpo.weight: weight must be a finite number >= 0; the paper uses 1.0 (got -1)",
        "ganpo.discriminator.d_modle: unknown key",
        "Did you mean 'd_model'?",
    )


def test_a_command_line_override_reaches_the_block(lf_cfg: Callable[..., Any], lf_train: Callable[..., Any]) -> None:
    run = lf_train("override", lf_cfg("override"), "ganpo.mask=respons")
    _assert_refused_before_loading(run, "ganpo.mask", "Did you mean 'response'")


def test_a_misspelt_block_is_refused_before_anything_loads(
    lf_cfg: Callable[..., Any], lf_train: Callable[..., Any]
) -> None:
    cfg = lf_cfg("typo")
    cfg["gnapo"] = cfg.pop("ganpo")
    run = lf_train("typo", cfg)
    _assert_refused_before_loading(run, "unknown top-level key 'gnapo': did you mean 'ganpo'?")


def test_a_setting_the_host_rules_refuse_stops_after_parsing_before_loading(
    lf_cfg: Callable[..., Any], lf_train: Callable[..., Any]
) -> None:
    run = lf_train("twice", lf_cfg("twice", {"pref_loss": "ipo", "ganpo": {"preference_loss": "savage"}}))
    _assert_refused_before_loading(run, "both choose the base loss", "remove pref_loss")


@pytest.mark.parametrize(("overrides", "fragments"), COMBINATIONS, ids=[json.dumps(o) for o, _ in COMBINATIONS])
def test_unsupported_combinations_are_refused_before_loading(
    overrides: dict[str, Any], fragments: list[str], lf_cfg: Callable[..., Any]
) -> None:
    from ganpo_llamafactory import run_exp

    cfg = lf_cfg("combination", overrides)
    if "gnapo" in overrides:
        cfg.pop("ganpo")
    with pytest.raises(GANPOConfigError) as refused:
        run_exp(cfg)
    for fragment in fragments:
        assert fragment in str(refused.value)
    assert not Path(cfg["output_dir"]).exists()


# -- training ----------------------------------------------------------------------------------


def test_dpo_adds_the_term_logs_it_everywhere_and_trains_the_discriminators(dpo: Any, plain: Any) -> None:
    _assert_trained(dpo, 4)
    plain.assert_ok()
    history, baseline = dpo.history(), plain.history()
    _assert_loss_is(history, lambda e: F["sigmoid"](e["rewards/margins"]))
    assert history[0]["rewards/margins"] == 0 == baseline[0]["rewards/margins"]  # policy == reference at step 1
    for theirs in baseline:
        assert "ganpo/adv_loss" not in theirs
        assert theirs["loss"] == pytest.approx(F["sigmoid"](theirs["rewards/margins"]), rel=1e-5)
    assert history[0]["loss"] - baseline[0]["loss"] == pytest.approx(history[0]["ganpo/adv_loss"], rel=1e-5)
    # LLaMA-Factory's own trainer_log.jsonl (LLaMA Board) carries the same metrics per step.
    lines = [line for line in dpo.trainer_log() if "loss" in line]  # the last line: the run's summary
    assert [line["ganpo/adv_loss"] for line in lines] == [e["ganpo/adv_loss"] for e in history]
    assert all("ganpo/adv_loss" not in line for line in plain.trainer_log())
    assert dpo.regularizer_state(2)["state"]["disc_steps"] == 2
    assert dpo.regularizer_state()["state"]["disc_steps"] == 4  # the final save, beside the model
    assert "reference: LLaMA-Factory's reference forward" in dpo.log


def test_evaluation_logs_the_term_everywhere_without_stepping_the_discriminators(
    lf_cfg: Callable[..., Any], lf_train: Callable[..., Any]
) -> None:
    """Evaluation every 2 steps on the training pairs, reported to TensorBoard: ``eval_ganpo/*`` in
    ``trainer_state.json``, ``trainer_log.jsonl`` and the event files; the discriminators step only
    in training (4 steps, 4 updates)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    settings = {
        "eval_dataset": "tiny_prefs",
        "eval_strategy": "steps",
        "eval_steps": 2,
        "per_device_eval_batch_size": 4,
    }
    run = lf_train("eval", lf_cfg("eval", {**settings, "report_to": "tensorboard"}))
    _assert_trained(run, 4)
    state = json.loads((run.out / "trainer_state.json").read_text())
    evaluations = [entry for entry in state["log_history"] if "eval_loss" in entry]
    assert [entry["step"] for entry in evaluations] == [2, 4]
    for entry in evaluations:
        assert math.isfinite(entry["eval_ganpo/adv_loss"]) and "eval_ganpo/d_pos/loss" not in entry
    lines = [line for line in run.trainer_log() if "eval_loss" in line]
    assert [line["eval_ganpo/adv_loss"] for line in lines] == [e["eval_ganpo/adv_loss"] for e in evaluations]
    logged: dict[str, dict[int, float]] = {}  # tag -> step -> value, over every event file of the run
    for path in run.out.rglob("events.out.tfevents.*"):  # transformers' runs/<date>/ (the final evaluation's too)
        scalars = EventAccumulator(str(path)).Reload()
        for tag in scalars.Tags()["scalars"]:
            logged.setdefault(tag, {}).update({event.step: event.value for event in scalars.Scalars(tag)})
    assert logged["train/ganpo/adv_loss"] == pytest.approx({e["step"]: e["ganpo/adv_loss"] for e in run.history()})
    assert logged["eval/ganpo/adv_loss"] == pytest.approx({e["step"]: e["eval_ganpo/adv_loss"] for e in evaluations})


def test_without_a_block_the_cli_is_llamafactory_cli(
    plain: Any, lf_cfg: Callable[..., Any], lf_train: Callable[..., Any]
) -> None:
    run = lf_train("noblock", lf_cfg("noblock", ganpo=False))
    run.assert_ok()
    assert "regularizer ON" not in run.log and not (run.out / "ganpo_regularizer.pt").exists()
    assert run.history() == plain.history()  # every number logged at every step
    assert_states_equal(load_file(run.out / "model.safetensors"), load_file(plain.out / "model.safetensors"), "policy")


def test_weight_zero_trains_the_policy_as_llamafactory_alone_does(
    plain: Any, lf_cfg: Callable[..., Any], lf_train: Callable[..., Any]
) -> None:
    run = lf_train("weight0", lf_cfg("weight0", {"ganpo": {"weight": 0.0}}))
    _assert_trained(run, 4)
    assert [e["loss"] for e in run.history()] == [e["loss"] for e in plain.history()]
    assert_states_equal(load_file(run.out / "model.safetensors"), load_file(plain.out / "model.safetensors"), "policy")


def test_lora_reference_is_the_adapter_disabled_pass_with_a_package_gpo_kind(
    lf_cfg: Callable[..., Any], lf_train: Callable[..., Any]
) -> None:
    lora = {"finetuning_type": "lora", "lora_rank": 4, "lora_alpha": 8, "lora_target": "all", "learning_rate": 1e-2}
    run = lf_train("lora", lf_cfg("lora", {**lora, "ganpo": {"preference_loss": "savage"}}))
    _assert_trained(run, 4)
    assert (run.checkpoint(4) / "adapter_model.safetensors").exists()
    assert "reference: LLaMA-Factory's adapter-disabled pass" in run.log
    assert "base loss: savage (computed by ganpo_plugins" in run.log
    history = run.history()
    assert any(abs(e["rewards/margins"]) > 1e-5 for e in history[1:])  # f is probed away from 0 too
    _assert_loss_is(history, lambda e: F["savage"](e["rewards/margins"]))


def test_hinge_and_squared_with_freeze_and_an_explicit_reference_are_computed_by_the_package(
    tiny_assets: Path, lf_cfg: Callable[..., Any], lf_train: Callable[..., Any]
) -> None:
    """LLaMA-Factory 0.9.5's own ``pref_loss: hinge`` trains sigmoid DPO (refused: the table); the
    package computes hinge on its summed log-probabilities instead."""
    hinge = lf_train("hinge", lf_cfg("hinge", {"max_steps": 3, "ganpo": {"preference_loss": "hinge"}}))
    _assert_trained(hinge, 3)
    assert "base loss: hinge (computed by ganpo_plugins" in hinge.log
    assert hinge.history()[0]["loss"] == pytest.approx(1.0 + hinge.history()[0]["ganpo/adv_loss"], rel=1e-6)
    _assert_loss_is(hinge.history(), lambda e: F["hinge"](e["rewards/margins"]))

    overrides = {"max_steps": 3, "finetuning_type": "freeze", "freeze_trainable_layers": 1,
                 "ref_model": str(tiny_assets / "model"), "ganpo": {"preference_loss": "squared"}}  # fmt: skip
    squared = lf_train("squared", lf_cfg("squared", overrides))
    _assert_trained(squared, 3)
    assert "Created reference model from" in squared.log
    assert "reference: LLaMA-Factory's reference forward" in squared.log
    assert squared.history()[0]["rewards/margins"] == 0  # the explicit reference holds the initial weights
    _assert_loss_is(squared.history(), lambda e: F["squared"](e["rewards/margins"]))


def test_simpo_runs_its_own_reference_forward_of_a_frozen_copy(
    lf_cfg: Callable[..., Any], lf_train: Callable[..., Any]
) -> None:
    run = lf_train("simpo", lf_cfg("simpo", {"max_steps": 3, "pref_loss": "simpo"}))
    _assert_trained(run, 3)
    assert "reference: an extra no-grad forward of the reference model" in run.log
    _assert_loss_is(run.history(), lambda e: F["simpo"](e["rewards/margins"]))


def test_orpo_with_lora_runs_the_adapter_disabled_reference_itself(
    lf_cfg: Callable[..., Any], lf_train: Callable[..., Any]
) -> None:
    lora = {"finetuning_type": "lora", "lora_rank": 4, "lora_alpha": 8, "lora_target": "all"}
    run = lf_train("orpo", lf_cfg("orpo", {**lora, "max_steps": 3, "pref_loss": "orpo"}))
    _assert_trained(run, 3)
    assert "reference: an extra no-grad forward of the PEFT base model" in run.log
    # ORPO: −log p̄(y_w) + β·(−log σ(log-odds ratio)), both parts logged by LLaMA-Factory.
    _assert_loss_is(run.history(), lambda e: e["sft_loss"] + BETA * e["odds_ratio_loss"])


def test_kill_after_a_checkpoint_then_resume_matches_the_uninterrupted_run(
    dpo: Any, lf_cfg: Callable[..., Any], run_cli: Callable[..., Any], lf_workdir: Path
) -> None:
    """The same run as ``dpo``, SIGKILLed by a callback right after checkpoint 2 is saved (through
    ``ganpo_llamafactory.run_exp(args, callbacks)``), then resumed with the CLI."""
    import yaml

    dpo.assert_ok()
    folder = lf_workdir / "killed"
    folder.mkdir()
    cfg = lf_cfg("killed")
    (folder / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    helper = Path(__file__).with_name("kill_after_checkpoint.py")
    killed = run_cli([str(helper), str(folder / "cfg.yaml"), "2"], log=folder / "killed.txt", cwd=folder)
    assert killed.returncode == -9, killed.stdout[-3000:]
    out = Path(cfg["output_dir"])
    assert (out / "checkpoint-2" / "ganpo_regularizer.pt").exists() and not (out / "checkpoint-4").exists()

    (folder / "resume.yaml").write_text(yaml.safe_dump({**cfg, "resume_from_checkpoint": str(out / "checkpoint-2")}))
    cli = str(Path(sys.executable).with_name("ganpo-llamafactory-cli"))
    resumed = run_cli([cli, "train", str(folder / "resume.yaml")], log=folder / "resumed.txt", cwd=folder, python=False)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    ours = torch.load(out / "checkpoint-4" / "ganpo_regularizer.pt", weights_only=True)["state"]
    assert ours["disc_steps"] == 4
    assert_states_equal(ours, dpo.regularizer_state(4)["state"])  # discriminators, μ, optimisers, RNG
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert losses[-2:] == [e["loss"] for e in dpo.history()[-2:]]
    assert_states_equal(load_file(out / "model.safetensors"), load_file(dpo.out / "model.safetensors"), "policy")
