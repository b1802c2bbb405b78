"""``python -m ganpo_openrlhf.train_dpo``: the real ``openrlhf.cli.train_dpo`` code path with GANPO
attached, on a tiny random Llama, on CPU (DeepSpeed CPU accelerator, gloo)."""

from __future__ import annotations

import json
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("openrlhf")
pytest.importorskip("tensorboard")

from bad_input_table import table
from orl_host import (
    TINY_D,
    check,
    dpo_args,
    regularizer_state,
    run,
    scalars,
    write_jsonl,
)
from state_equality import assert_states_equal

from ganpo_plugins import GANPORegularizer, RegularizerContext, parse_config

MODULE = "ganpo_openrlhf.train_dpo"
TINY_D_CONFIG = {"discriminator": {"d_model": 32, "num_heads": 4, "ffn_size": 64}}


def eval_rows(assets: Path) -> list[dict]:
    return [json.loads(line) for line in (assets / "prefs.jsonl").read_text().splitlines()[-4:]]


def zero2_args(assets: Path, out: Path, eval_file: Path) -> list[str]:
    return dpo_args(
        assets,
        out,
        *TINY_D,
        "--ds.zero_stage", "2",
        "--ckpt.save_steps", "2",
        "--ckpt.save_hf",
        "--eval.dataset", str(eval_file),
        "--eval.split", "train",
        "--eval.steps", "2",
    )  # fmt: skip


@pytest.fixture(scope="module")
def zero2_run(tiny_assets: Path, host_env, tmp_path_factory) -> Path:
    """1 process, ZeRO-2, 16 pairs, batch 4 of micro-batches of 2 (4 policy steps, 8 micro-steps),
    a DeepSpeed and an HF checkpoint every 2 steps, evaluation every 2 steps."""
    out = tmp_path_factory.mktemp("zero2")
    args = zero2_args(tiny_assets, out, write_jsonl(out / "eval.jsonl", eval_rows(tiny_assets)))
    check(run(MODULE, args, out / "log.txt", host_env), out / "log.txt")
    return out


@pytest.mark.newest
def test_ganpo_metrics_reach_openrlhf_logs(zero2_run: Path) -> None:
    logged = scalars(zero2_run / "tb")
    for name in ("adv_loss", "d_pos/loss", "d_neg/loss", "d_pos/accuracy", "d_neg/mu_real"):
        values = logged[f"train/ganpo/{name}"]
        assert sorted(values) == [1, 2, 3, 4], name
        assert all(math.isfinite(v) for v in values.values()), name
    assert sorted(logged["eval/ganpo/adv_loss"]) == [2, 4]
    # OpenRLHF's own metrics are still there, and its loss now includes λ·L_adv (λ = 1).
    assert sorted(logged["train/loss_mean"]) == [1, 2, 3, 4]
    assert logged["train/loss_mean"][1] == pytest.approx(math.log(2) + logged["train/ganpo/adv_loss"][1], abs=1e-4)
    assert "eval/eval_loss" in logged


@pytest.mark.newest
def test_discriminators_step_once_per_policy_step(zero2_run: Path) -> None:
    state = regularizer_state(zero2_run / "model" / "ganpo_regularizer.pt")["state"]
    # 8 micro-steps with 2-step accumulation (and two evaluations, which never step): 4 updates.
    assert state["disc_steps"] == 4 and state["policy_steps"] == 4
    assert state["mu_initialized"] and torch.isfinite(state["mu"]).all()
    config = parse_config(TINY_D_CONFIG)
    fresh = GANPORegularizer(config, RegularizerContext(hidden_size=64, policy_lr=1e-3, total_steps=4, seed=42))
    initial = fresh.discriminators.state_dict()
    trained = state["discriminators"]
    changed = [k for k in initial if k.endswith("weight") and not torch.equal(initial[k], trained[k])]
    assert changed == [k for k in initial if k.endswith("weight")], "some discriminator weights never moved"


def test_the_run_ends_with_the_closing_summary(zero2_run: Path) -> None:
    lines = (zero2_run / "log.txt").read_text().splitlines()
    summary = [i for i, line in enumerate(lines) if "ganpo: run summary at the last log (step 4): D+ accuracy" in line]
    assert len(summary) == 1 and "ganpo regularizer ON" in lines[summary[0] - 1]
    # 8 training micro-steps; the two evaluations are not training steps.
    assert (
        "skipped in 8 training micro-steps of this process: 0 discriminator updates, 0 policy terms"
        in lines[summary[0]]
    )


def test_checkpoints_hold_regularizer_state(zero2_run: Path) -> None:
    ckpt = zero2_run / "ckpt"
    assert (ckpt / "latest").read_text().strip() == "global_step4"
    step2 = regularizer_state(ckpt / "global_step2" / "ganpo_regularizer.pt")
    assert step2["state"]["disc_steps"] == 2 and step2["regularizer"] == "ganpo"
    final = regularizer_state(zero2_run / "model" / "ganpo_regularizer.pt")
    assert_states_equal(regularizer_state(ckpt / "global_step4" / "ganpo_regularizer.pt"), final)
    assert_states_equal(regularizer_state(ckpt / "global_step4_hf" / "ganpo_regularizer.pt"), final)
    assert (ckpt / "global_step2_hf" / "ganpo_regularizer.pt").exists()


@pytest.mark.newest
def test_resume_continues_as_the_uninterrupted_run(
    zero2_run: Path, tiny_assets: Path, host_env, tmp_path: Path
) -> None:
    # Resume from the checkpoint half way (step 2 of 4) with the run's own flags: the resumed run
    # restores the regularizer, trains steps 3 and 4, and ends where the uninterrupted run ended.
    shutil.copytree(zero2_run / "ckpt" / "global_step2", tmp_path / "ckpt" / "global_step2")
    (tmp_path / "ckpt" / "latest").write_text("global_step2")
    args = zero2_args(tiny_assets, tmp_path, write_jsonl(tmp_path / "eval.jsonl", eval_rows(tiny_assets)))
    result = run(MODULE, [*args, "--ckpt.load_enable"], tmp_path / "log.txt", host_env)
    check(result, tmp_path / "log.txt")
    assert "ganpo: restored the regularizer state from" in result.stdout
    resumed = regularizer_state(tmp_path / "model" / "ganpo_regularizer.pt")["state"]
    assert resumed["disc_steps"] == 4  # it trained on from 2
    assert_states_equal(resumed, regularizer_state(zero2_run / "model" / "ganpo_regularizer.pt")["state"])
    from safetensors.torch import load_file

    policy = load_file(tmp_path / "model" / "model.safetensors")
    assert_states_equal(policy, load_file(zero2_run / "model" / "model.safetensors"), "policy")


def test_two_ranks_zero3_keep_identical_discriminators(tiny_assets: Path, host_env, tmp_path: Path) -> None:
    args = dpo_args(tiny_assets, tmp_path, *TINY_D, "--ds.zero_stage", "3", "--ganpo.save_every_rank", micro=1)
    check(run(MODULE, args, tmp_path / "log.txt", host_env, nproc=2), tmp_path / "log.txt")
    rank0 = regularizer_state(tmp_path / "model" / "ganpo_regularizer.pt")["state"]
    rank1 = regularizer_state(tmp_path / "model" / "ganpo_regularizer.rank1.pt")["state"]
    assert rank0["disc_steps"] == 4  # 16 pairs / batch 4; 2 ranks × micro 1 × 2 accumulation steps
    for key in ("discriminators", "optimizers", "mu", "disc_steps"):
        assert_states_equal(rank0[key], rank1[key], key)


def _with_dropout(tiny_assets: Path, dest: Path) -> Path:
    """A copy of the tiny model with attention dropout on, so any draw from the host's RNG by the
    regularizer would change the policy's training."""
    shutil.copytree(tiny_assets / "model", dest)
    config = json.loads((dest / "config.json").read_text())
    config["attention_dropout"] = 0.1
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_weight_zero_is_plain_openrlhf_dpo(tiny_assets: Path, host_env, tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    _with_dropout(tiny_assets, assets / "model")
    shutil.copy(tiny_assets / "prefs.jsonl", assets / "prefs.jsonl")
    plain, ganpo = tmp_path / "plain", tmp_path / "ganpo"
    check(run("openrlhf.cli.train_dpo", dpo_args(assets, plain), plain / "log.txt", host_env), plain / "log.txt")
    args = dpo_args(assets, ganpo, *TINY_D, "--ganpo.weight", "0")
    check(run(MODULE, args, ganpo / "log.txt", host_env), ganpo / "log.txt")

    from safetensors.torch import load_file

    expected = load_file(plain / "model" / "model.safetensors")
    actual = load_file(ganpo / "model" / "model.safetensors")
    initial = load_file(assets / "model" / "model.safetensors")
    assert set(expected) == set(actual)
    assert any(not torch.equal(expected[k], initial[k].to(expected[k].dtype)) for k in expected), "policy never moved"
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)
    plain_logs, ganpo_logs = scalars(plain / "tb"), scalars(ganpo / "tb")
    for tag in ("train/loss", "train/chosen_reward", "train/grad_norm"):
        assert ganpo_logs[tag] == plain_logs[tag], tag
    assert regularizer_state(ganpo / "model" / "ganpo_regularizer.pt")["state"]["disc_steps"] == 4


# Each GPO kind f(x) of x = βρ (docs/methods.md), written out here.
GPO = {
    "hinge": lambda x: max(0.0, 1.0 - x),
    "squared": lambda x: (x - 1.0) ** 2,
    "exponential": lambda x: math.exp(-x),
    "truncated_quadratic": lambda x: max(0.0, 1.0 - x) ** 2,
    "savage": lambda x: 1.0 / (1.0 + math.exp(x)) ** 2,
}


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.newest) if k == "savage" else k for k in GPO])
def test_gpo_kind_is_the_base_loss(kind: str, tiny_assets: Path, host_env, tmp_path: Path) -> None:
    # One pair per step, three steps: OpenRLHF's warm-up gives step 1 lr 0, so the policy first moves
    # at step 2 and step 3 is the first with ρ ≠ 0, where the kinds differ (at ρ = 0 all but savage
    # give 1). β 2 and lr 1e-2 make the margin large enough to tell them apart.
    extra = ("--ganpo.preference_loss", kind, "--model.beta", "2.0", "--adam.lr", "1e-2")
    args = dpo_args(tiny_assets, tmp_path, *TINY_D, *extra, samples=3, batch=1, micro=1)
    check(run(MODULE, args, tmp_path / "log.txt", host_env), tmp_path / "log.txt")
    logged = scalars(tmp_path / "tb")
    margin = logged["train/chosen_reward"][3] - logged["train/reject_reward"][3]  # βρ of the one pair
    base = logged["train/loss"][3] - logged["train/ganpo/adv_loss"][3]  # loss = f(βρ) + λ·L_adv, λ = 1
    assert base == pytest.approx(GPO[kind](margin), abs=1e-4), (kind, margin)
    # ρ ≠ 0 tells this kind from the others, bar at most one: no x separates all five (truncated_quadratic
    # equals squared for x ≤ 1 and hinge for x ≥ 1)
    others = {other: f(margin) for other, f in GPO.items() if other != kind}
    assert sum(abs(value - base) > 1e-3 for value in others.values()) >= len(others) - 1, (margin, base, others)


@pytest.mark.newest
def test_simpo_base_loss_uses_length_normalised_logps_and_margin(tiny_assets: Path, host_env, tmp_path: Path) -> None:
    gamma, beta = 0.5, 2.0
    extra = ("--ganpo.preference_loss", "simpo", "--ganpo.simpo_gamma", str(gamma), "--model.beta", str(beta))
    args = dpo_args(tiny_assets, tmp_path, *TINY_D, *extra, samples=2, batch=1, micro=1)
    check(run(MODULE, args, tmp_path / "log.txt", host_env), tmp_path / "log.txt")
    logged = scalars(tmp_path / "tb")
    for step in (1, 2):  # one pair per step: the logged rewards are β · mean response log-prob
        margin = logged["train/chosen_reward"][step] - logged["train/reject_reward"][step]
        expected = math.log1p(math.exp(-(margin - gamma)))  # -log σ(β Δmean − γ)
        assert logged["train/loss"][step] - logged["train/ganpo/adv_loss"][step] == pytest.approx(expected, abs=1e-4)
    # The reference forward still runs (GANPO needs its latents): the regularizer stepped.
    assert regularizer_state(tmp_path / "model" / "ganpo_regularizer.pt")["state"]["disc_steps"] == 2


# docs/bad-input.md is the test data: each row's flags must fail with each listed fragment.
BAD_FLAGS = {flags: (shlex.split(flags), fragments) for flags, fragments in table("OpenRLHF flags")}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_flags_stop_before_any_model_loads(case: str, tiny_assets: Path, host_env, tmp_path: Path) -> None:
    flags, expected = BAD_FLAGS[case]
    result = run(MODULE, dpo_args(tiny_assets, tmp_path, *flags), tmp_path / "log.txt", host_env)
    assert result.returncode == 2, result.stdout[-3000:]
    assert "ganpo_openrlhf.train_dpo: error:" in result.stdout
    for text in expected:
        assert text in result.stdout, result.stdout[-3000:]
    assert "Loading weights" not in result.stdout and not (tmp_path / "model").exists()


@pytest.mark.parametrize("script", ["ganpo-openrlhf-train-dpo", "ganpo-openrlhf-train-rm"])
def test_console_scripts_are_the_launchers(script: str, host_env, tmp_path: Path) -> None:
    path = shutil.which(script, path=str(Path(sys.executable).parent))
    assert path is not None, f"{script} is not installed beside {sys.executable}"
    prefix = "--ganpo" if script.endswith("dpo") else "--apo"
    result = subprocess.run(
        [path, f"{prefix}.no_such_key", "1"], env=host_env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2 and f"{prefix}.no_such_key: unknown key" in result.stderr, result.stderr
